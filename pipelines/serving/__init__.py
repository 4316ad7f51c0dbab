"""Online inference: the registered READ model behind Ray Serve, an HTTP API and a web page.

- `config.ServeConfig`: the `serve:` section of a job config (what is served, batching, replicas).
- `model_source`: which registry version an alias names, and loading it without unpickling.
- `queries` / `results` / `figures`: request validation, response JSON, overlay pictures.
- `model_server.ReadModelServer`: the model replica (dynamic batching, alias roll-over).
- `ingress.ReadIngress`: the HTTP API and the page; `app`: the application; `cli`: `read-serve`.
"""
