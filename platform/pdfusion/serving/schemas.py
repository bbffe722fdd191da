"""Request and response schemas of the HTTP API (pydantic, so FastAPI publishes them at /docs).

The request model is built per server (`request_model`) so that its bounds are the *served* limits
(`ServeLimits` intersected with what the loaded model can do): the OpenAPI document then states
exactly what the server accepts, and schema-driven fuzzing explores the real boundaries.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from pdfusion.config import ServeLimits

SEED_MAX = 2**63 - 1
NUMBER_FIELDS = ("n_atoms", "n_samples", "guidance", "steps", "seed", "pdf_guidance", "pdf_guidance_iters")


def no_bool(value: Any) -> Any:
    """JSON `true` is not a number: pydantic's lax mode would read `n_samples: true` as 1."""
    if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
        raise ValueError("must be a number, not true/false")
    return value


def no_bool_validator(*fields: str):
    """A model validator (for ``create_model(__validators__=...)``) refusing booleans in number fields."""
    return {"no_bool": field_validator(*fields, mode="before")(no_bool)}


class Bounds(BaseModel):
    """The effective bounds of one server: its ServeLimits and its model's capabilities combined."""

    max_samples: int
    max_atoms: int
    max_steps: int
    max_points: int
    max_guidance: float
    max_pdf_guidance: float
    max_pdf_guidance_iters: int
    max_body_bytes: int
    request_timeout_s: float

    @classmethod
    def from_limits(cls, limits: ServeLimits, model_max_atoms: int, model_timesteps: int) -> Bounds:
        return cls(
            max_samples=limits.max_samples,
            max_atoms=min(limits.max_atoms, model_max_atoms),
            max_steps=min(limits.max_steps, model_timesteps),
            max_points=limits.max_points,
            max_guidance=limits.max_guidance,
            max_pdf_guidance=limits.max_pdf_guidance,
            max_pdf_guidance_iters=limits.max_pdf_guidance_iters,
            max_body_bytes=limits.max_body_bytes,
            request_timeout_s=limits.request_timeout_s,
        )


def _sampling_fields(b: Bounds) -> dict[str, Any]:
    """The sampling options shared by the JSON body and the multipart form."""
    return {
        "metal": (str, Field(min_length=1, max_length=3, description="Metal element symbol, e.g. 'Ti'.",
                             examples=["Ti"])),
        "n_atoms": (int | None, Field(None, ge=2, le=b.max_atoms,
                                      description="Atoms per structure; omitted: predicted from the PDF.")),
        "n_samples": (int | None, Field(None, ge=1, le=b.max_samples,
                                        description="Candidates to generate (server default if omitted).")),
        "guidance": (float | None, Field(None, ge=0.0, le=b.max_guidance, allow_inf_nan=False,
                                         description="Classifier-free guidance gamma "
                                                     "(0 unconditional, 1 conditional).")),
        "steps": (int | None, Field(None, ge=1, le=b.max_steps,
                                    description="Sampler steps (model default if omitted).")),
        "seed": (int | None, Field(None, ge=0, le=SEED_MAX,
                                   description="Reproducible sampling: "
                                               "a seeded request is sampled on its own generator.")),
        "pdf_guidance": (float | None, Field(None, ge=0.0, le=b.max_pdf_guidance, allow_inf_nan=False,
                                             description="Steer sampling toward this PDF through the simulator: "
                                                         "RMS step per atom in Å at full noise (0 = off; model "
                                                         "default if omitted).")),
        "pdf_guidance_iters": (int | None, Field(None, ge=1, le=b.max_pdf_guidance_iters,
                                                 description="PDF-guidance fit steps per sampler step (model "
                                                             "default if omitted).")),
        "refine": (bool, Field(False, description="Refine every candidate by gradient descent on R_wp, then re-rank.")),
        "return_pdf": (bool, Field(False,
                                   description="Include each candidate's simulated G(r) and the model's r grid.")),
    }


def request_model(b: Bounds) -> type[BaseModel]:
    """JSON body of POST /v1/sample."""
    fields = {
        "r": (list[float], Field(min_length=2, max_length=b.max_points,
                                 description="r values (Å), strictly increasing.")),
        "g": (list[float], Field(min_length=2, max_length=b.max_points, description="G(r) values, one per r.")),
        **_sampling_fields(b),
    }
    return create_model("SampleRequest", __config__=ConfigDict(extra="forbid"),
                        __validators__=no_bool_validator("r", "g", *NUMBER_FIELDS), **fields)


def form_model(b: Bounds) -> type[BaseModel]:
    """Form fields (besides `file`) of a multipart POST /v1/sample; validated from the form's strings."""
    return create_model("SampleForm", __config__=ConfigDict(extra="forbid"), **_sampling_fields(b))


def form_openapi_schema(b: Bounds) -> dict[str, Any]:
    """OpenAPI schema of the multipart variant: a `.gr`/`.csv` file plus the sampling options."""
    schema = form_model(b).model_json_schema()
    schema["properties"] = {"file": {"type": "string", "format": "binary", "description": "A .gr or .csv PDF file."},
                            **schema["properties"]}
    schema["required"] = ["file", *schema.get("required", [])]
    schema["title"] = "SampleUpload"
    return schema


class CandidateOut(BaseModel):
    rank: int = Field(description="1 = best fit (lowest R_wp).")
    n_atoms: int
    formula: str
    rwp: float = Field(description="R_wp of the candidate's simulated PDF against the request's PDF.")
    rwp_before_refine: float | None = None
    expansion: float | None = Field(None, description="Isotropic scale fitted to the request's PDF (models that "
                                    "generate in a bond-length frame, model.bond_length); null otherwise.")
    xyz: str = Field(description="XYZ text (element symbols, Å, centred).")
    g_sim: list[float] | None = Field(None, description="Simulated G(r) on the model's r grid (return_pdf).")


class ModelRef(BaseModel):
    name: str
    version: str


class UsedParams(BaseModel):
    metal: str
    metal_z: int
    n_atoms: int | None = Field(description="Requested atom count; null: predicted per candidate.")
    n_samples: int
    guidance: float
    steps: int
    pdf_guidance: float
    pdf_guidance_iters: int
    pdf_guidance_window: list[float] = Field(description="Shares of the steps PDF guidance acted on (the model's).")
    seed: int | None = Field(description="The seed given; null: the request was batched on a server seed.")
    refine: bool
    refine_steps: int
    interpolated: bool = Field(description="True when the PDF was interpolated onto the model's r grid.")
    normalized: bool = Field(description="True when G was scaled to max 1 (the model's training convention).")
    n_points: int = Field(description="Points in the PDF as received.")
    r_min: float
    r_max: float
    n_r: int = Field(description="Points of the model's r grid.")


class SampleResponse(BaseModel):
    model: ModelRef
    params: UsedParams
    candidates: list[CandidateOut]
    r: list[float] | None = Field(None, description="The model's r grid (return_pdf).")
    elapsed_s: float


class ModelInfo(BaseModel):
    name: str
    version: str
    r_min: float
    r_max: float
    r_step: float
    n_r: int
    defaults: dict[str, Any] = Field(description="Default guidance, steps and PDF guidance (the model's, within "
                                                 "the bounds).")
    default_samples: int
    training: dict[str, Any] = Field(description="Summary of the training configuration.")
    limits: Bounds
    cost: dict[str, Any] | None = Field(None, description="the replica's measured speed (s per sampler step of one "
                                        "candidate of `atoms` atoms) and max_cost_s, the admitted estimate per request")


class Health(BaseModel):
    status: str = Field(description="ok (200), or degraded / unavailable (503, with Retry-After)")
    model: ModelRef
    sampler: dict[str, Any] | None = Field(None, description="the sampler's answer to the probe: ready, ongoing "
                                           "requests and capacity of one replica, or why it is not ready")


class ErrorDetail(BaseModel):
    field: str = Field(description="The request field at fault ('body', 'file', 'r', 'n_atoms', ...).")
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer has this body."""

    error: ErrorDetail
