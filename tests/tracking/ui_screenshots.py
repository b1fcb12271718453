"""Screenshots of the lineage in MLflow's UI, in a real headless browser (run by hand, not by `make test`).

    python tests/tracking/ui_screenshots.py PROJECT/mlruns/mlflow.db OUT_DIR

Serves the store with `mlflow server` on a free loopback port and has Chromium (Debian's `chromium` package)
photograph the pages of the first stage-3 run, its parent's and its own logged model, and its registry version,
into OUT_DIR (keep the PNGs out of git). Prints each page's address and file.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.tracking.conftest import MLFLOW, Server, free_port, wait_healthy


def pages(server: Server) -> dict[str, str]:
    exp = server.get("experiments/get-by-name", experiment_name="gemctl")["experiment"]["experiment_id"]
    found = server.post("runs/search", {"experiment_ids": [exp], "order_by": ["attributes.start_time ASC"],
                                        "filter": "tags.`gemctl.stage` = 'stage3'"})["runs"]
    run = server.get("runs/get", run_id=found[0]["info"]["run_id"])["run"]
    own = run["outputs"]["model_outputs"][0]["model_id"]
    parent = run["inputs"]["model_inputs"][0]["model_id"]
    tags = {t["key"]: t["value"] for t in server.get(f"logged-models/{own}")["model"]["info"]["tags"]}
    version = json.loads(tags["mlflow.modelVersions"])[0]
    return {"run-stage3": f"#/experiments/{exp}/runs/{run['info']['run_id']}",
            "model-stage3": f"#/experiments/{exp}/models/{own}",
            "model-parent": f"#/experiments/{exp}/models/{parent}",
            "registry-version": f"#/models/{version['name']}/versions/{version['version']}"}


def main(store: Path, out: Path) -> None:
    browser = shutil.which("chromium") or sys.exit("no chromium: apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{store.resolve()}",
                                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                    stdout=f, stderr=subprocess.STDOUT, cwd=tmp)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, log)
            for name, page in pages(Server(url, proc)).items():
                png = out / f"{name}.png"
                # the UI is a single-page app: virtual time lets its requests finish before the picture
                subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                "--virtual-time-budget=25000", "--window-size=1400,2000", f"--screenshot={png}",
                                f"{url}/{page}"], check=True, capture_output=True, timeout=300)
                print(f"{url}/{page} -> {png}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
