"""pdfusion.serving: the HTTP sampling service (request schemas, validation, batched sampler, Ray Serve app).

`service` and `api` are free of Ray (usable in-process); `deployments` wires them into Ray Serve;
`app.app_builder` is what `serve run` / `serve deploy` import (through `serve/app.py`)."""
