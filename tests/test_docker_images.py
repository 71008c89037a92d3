"""The images: pinned bases and tags, the Airflow image ships the locked product only, Dovecot's agrees."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from tests.stack_files import (
    AIRFLOW_DOCKERFILE,
    AIRFLOW_SERVICES,
    DOVECOT_DIR,
    REPO,
    assert_pinned,
    compose,
    dockerfile,
    dovecot_config,
    entrypoint_default,
    env_example,
    environment_of,
    image_reference,
    locked_version,
    project,
    services,
    volume_targets,
)

# ------------------------------------------------------------------------------------ image pins


def test_every_image_tag_is_pinned_to_an_exact_version():
    for name, service in services().items():
        assert "image" in service, f"{name} has no image name (a build-only service gets a random one)"
        assert_pinned(service["image"], f"service {name}")


def test_every_dockerfile_base_image_is_pinned():
    for path in (AIRFLOW_DOCKERFILE, DOVECOT_DIR / "Dockerfile"):
        bases = [i.arguments.split()[0] for i in dockerfile(path) if i.keyword == "FROM"]
        assert bases, f"{path} has no FROM"
        for base in bases:
            assert_pinned(base, str(path.relative_to(REPO)))


def test_airflow_base_image_matches_the_locked_airflow_and_python():
    (base,) = [i.arguments.split()[0] for i in dockerfile(AIRFLOW_DOCKERFILE) if i.keyword == "FROM"]
    python = re.search(r">=\s*(\d+\.\d+)", project()["requires-python"]).group(1)
    expected = f"apache/airflow:{locked_version('apache-airflow')}-python{python}"
    assert base == expected, f"Dockerfile builds FROM {base}, but the lock and pyproject say {expected}"


def test_built_images_are_named_after_the_project_version():
    version = project()["version"]
    built = {name: service for name, service in services().items() if "build" in service}
    assert set(AIRFLOW_SERVICES) | {"jira-standin", "dovecot"} <= set(built)
    for name, service in built.items():
        image_name, tag = image_reference(service["image"])
        assert tag == version, f"{name} builds {service['image']}, but the project is at {version}"
        assert image_name.startswith(project()["name"]), f"{name} builds an image not named after the project"
        context = REPO / (
            service["build"] if isinstance(service["build"], str) else service["build"]["context"]
        )
        assert (context / "Dockerfile").is_file(), f"{name} builds from {context}, which has no Dockerfile"


def airflow_image_copies() -> dict[str, str]:
    """Source -> destination of every COPY in the Airflow Dockerfile."""
    copies = {}
    for instruction in dockerfile(AIRFLOW_DOCKERFILE):
        if instruction.keyword == "COPY":
            *sources, destination = [
                word for word in instruction.arguments.split() if not word.startswith("--")
            ]
            for source in sources:
                copies[source.rstrip("/")] = destination.rstrip("/")
    return copies


def _imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_airflow_image_ships_the_product_and_no_test_double():
    assert airflow_image_copies() == {
        "requirements.txt": "/opt/airflow/requirements.txt",
        "dags": "/opt/airflow/dags",
        "plugins": "/opt/airflow/plugins",
        "include": "/opt/airflow/include",
    }
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {"devkit", "tests", "tests_distributed", "bench"} <= ignored, "the build context carries dev files"
    # What the image holds must run without the dev kit, the tests or the scripts.
    for folder in ("dags", "plugins", "include"):
        for path in sorted((REPO / folder).rglob("*.py")):
            dev_imports = _imported_top_level_modules(path) & {
                "devkit",
                "tests",
                "tests_distributed",
                "scripts",
                "bench",
            }
            assert not dev_imports, f"{path.relative_to(REPO)} imports {sorted(dev_imports)}"


def test_airflow_image_installs_the_hash_pinned_lock_and_ships_the_code():
    instructions = dockerfile(AIRFLOW_DOCKERFILE)
    copies = airflow_image_copies()
    assert "requirements.txt" in copies, "the Dockerfile does not copy the lock"
    installs = [i.arguments for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments]
    assert installs, "the Dockerfile installs nothing"
    for command in installs:
        words = command.split()
        assert "--require-hashes" in words, f"pip install without --require-hashes: {command}"
        assert words[words.index("-r") + 1] == copies["requirements.txt"], (
            f"pip installs {words[words.index('-r') + 1]}, not the copied lock {copies['requirements.txt']}"
        )
    for package in ("dags", "plugins", "include"):
        assert copies.get(package) == f"/opt/airflow/{package}", f"{package}/ is not copied to /opt/airflow"
    env = dict(i.arguments.split("=", 1) for i in instructions if i.keyword == "ENV")
    assert env.get("PYTHONPATH") == "/opt/airflow", "include/ is not importable as a top-level package"


def test_dovecot_image_files_agree_with_each_other_and_the_stack():
    config = dovecot_config()
    instructions = dockerfile(DOVECOT_DIR / "Dockerfile")
    vmail_uid = re.search(r"useradd --uid (\d+)", " ".join(i.arguments for i in instructions)).group(1)
    assert re.search(rf"^first_valid_uid = {vmail_uid}$", config, re.MULTILINE), "vmail is not allowed mail"
    copies = {
        words[-2]: words[-1] for words in (i.arguments.split() for i in instructions if i.keyword == "COPY")
    }
    assert copies["dovecot.conf"] == entrypoint_default("DOVECOT_CONF")
    assert (
        copies["entrypoint.sh"]
        == json.loads(next(i.arguments for i in instructions if i.keyword == "ENTRYPOINT"))[0]
    )

    cert_dir = entrypoint_default("DOVECOT_CERT_DIR")
    assert f"ssl_cert = <{cert_dir}/cert.pem" in config
    assert f"ssl_key = <{entrypoint_default('DOVECOT_KEY_DIR')}/key.pem" in config
    assert f"{entrypoint_default('DOVECOT_USERS_FILE')}\n" in config
    mail_home = re.search(r"home=(\S+)/%n", config).group(1)
    mounts = volume_targets(services()["dovecot"])
    assert mounts.get(mail_home) in compose()["volumes"], "mail does not survive a recreated container"

    # The certificate volume is what the Airflow containers trust for imap_default.
    tls_volume = mounts.get(cert_dir)
    assert tls_volume in compose()["volumes"], "the dovecot certificate is not on a shared volume"
    for name in AIRFLOW_SERVICES:
        service = services()[name]
        trusted = [
            entry.split(":")[1]
            for entry in service["volumes"]
            if entry.startswith(f"{tls_volume}:") and entry.endswith(":ro")
        ]
        assert trusted, f"{name} does not mount the dovecot certificate read-only"
        assert trusted[0] in environment_of(service)["SSL_CERT_DIR"].split(":"), name
        assert "/etc/ssl/certs" in environment_of(service)["SSL_CERT_DIR"].split(":"), "system CAs dropped"
    assert entrypoint_default("DOVECOT_TLS_NAME") == env_example()["IMAP_HOST"], (
        "the certificate is not issued for the host imap_default connects to"
    )
