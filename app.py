"""The Hugging Face Space entry point: `python app.py` serves `medsa app` on port 7860.

It listens on GRADIO_SERVER_NAME, which Spaces set to 0.0.0.0; elsewhere it stays on 127.0.0.1.

Configure it with environment variables (a Space's "Variables"): MEDSA_MODEL (a SAM checkpoint, e.g.
facebook/sam-vit-base; default: the small offline SAM in models/), MEDSA_ADAPTERS (Med-SA adapter Hub ids or
folders, comma-separated; default: none) and MEDSA_MAX_UPLOAD_MB (default 200).
"""

import os

from peft_medsa.app import DEFAULT_MODEL, launch

if __name__ == "__main__":
    adapters = [a.strip() for a in os.environ.get("MEDSA_ADAPTERS", "").split(",") if a.strip()]
    launch(
        os.environ.get("MEDSA_MODEL") or DEFAULT_MODEL,
        adapters,
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_upload_mb=float(os.environ.get("MEDSA_MAX_UPLOAD_MB", "200")),
    )
