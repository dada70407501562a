// Swagger UI for /docs, reading the merged OpenAPI document (BentoML's probes and our mounted routes).
window.onload = function () {
  window.ui = SwaggerUIBundle({ url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null });
};
