"""The rpi-image-gen recipe (images/rpi-image-gen/) has what rpi-image-gen's documentation requires.

CI cannot build an arm64 image, so the recipe is checked the way rpi-image-gen's own
`metadata --lint` reads it (docs/layer/index.adoc and site/metadata_parser.py upstream): the
layer's X-Env metadata is DEB822 inside `# METABEGIN` / `# METAEND` comments, needs
X-Env-Layer-Name and a major.minor.patch X-Env-Layer-Version, uses only the supported
X-Env-Layer-* fields, and every X-Env-Var-<name> attribute has its variable, a prefix, a
validation rule of a known form and a known set policy. The YAML body is mmdebstrap's.
"""

import re
import subprocess
from pathlib import Path

import yaml

from tests.helpers.tools import require_tool

SOURCE = Path(__file__).resolve().parents[2] / "images" / "rpi-image-gen"
LAYER = SOURCE / "layer" / "ocn-edge.yaml"
CONFIG = SOURCE / "config" / "ocn-edge.yaml"

LAYER_FIELDS = {"Name", "Desc", "Version", "Requires", "Conflicts", "Category", "Type", "Generator", "Provides",
                "RequiresProvider", "AfterProvider", "Sets"}
VAR_ATTRIBUTES = {"Desc", "Required", "Valid", "Set", "Anchor", "Conflicts", "Triggers"}
VALID_RULE = re.compile(r"string|string-or-empty|string-or-unset|bool|int|size|capacity|file|file-nzero|dir"
                        r"|int:\d+-\d+|regex:.+|keywords:.+|list:.+|[^,\s]+(,[^,\s]*)+")
SET_POLICIES = {"y", "n", "immediate", "lazy", "force", "skip", "true", "false"}


def _metadata() -> dict[str, str]:
    """The layer's X-Env fields, DEB822 continuation lines joined."""
    lines = LAYER.read_text().splitlines()
    begin, end = lines.index("# METABEGIN"), lines.index("# METAEND")
    fields: dict[str, str] = {}
    key = None
    for line in lines[begin + 1:end]:
        assert line.startswith("#"), line
        text = line[1:]
        if not text.strip():
            continue
        if text.startswith("  ") and key:  # "#  more": a continuation of the field above
            fields[key] += " " + text.strip()
            continue
        key, sep, value = text.strip().partition(":")
        assert sep and key.startswith("X-Env-"), f"not an X-Env field: {line!r}"
        assert key not in fields, f"{key} appears twice"
        fields[key] = value.strip()
    return fields


def _variables(fields: dict[str, str]) -> dict[str, dict[str, str]]:
    names = {key.removeprefix("X-Env-Var-") for key in fields
             if key.startswith("X-Env-Var-") and key.rsplit("-", 1)[-1] not in VAR_ATTRIBUTES}
    return {name: {attr: fields[f"X-Env-Var-{name}-{attr}"] for attr in VAR_ATTRIBUTES
                   if f"X-Env-Var-{name}-{attr}" in fields} | {"": fields[f"X-Env-Var-{name}"]} for name in names}


def test_the_layer_metadata_has_the_required_and_only_supported_fields():
    fields = _metadata()
    assert fields["X-Env-Layer-Name"] == "ocn-edge"
    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", fields["X-Env-Layer-Version"])
    assert fields["X-Env-Layer-Desc"] and fields["X-Env-Layer-Category"]
    layer_fields = {key.removeprefix("X-Env-Layer-") for key in fields if key.startswith("X-Env-Layer-")}
    assert layer_fields <= LAYER_FIELDS, layer_fields - LAYER_FIELDS
    assert "systemd-timesyncd" in fields["X-Env-Layer-Requires"].split(","), "time-wait-sync waits on timesyncd"


def test_every_variable_has_a_prefix_a_known_rule_and_set_policy():
    fields = _metadata()
    variables = _variables(fields)
    assert variables and fields["X-Env-VarPrefix"] == "ocn"
    for key in fields:
        if key.startswith("X-Env-Var-"):
            name = key.removeprefix("X-Env-Var-")
            assert name in variables or name.rsplit("-", 1)[0] in variables, f"{key}: attribute of no variable"
    for name, attrs in variables.items():
        assert attrs.get("Desc"), name
        assert VALID_RULE.fullmatch(attrs["Valid"]), (name, attrs["Valid"])
        assert attrs["Set"] in SET_POLICIES, (name, attrs["Set"])
        assert attrs.get("Required", "n") in {"y", "n", "true", "false"}, name
        if "," in attrs["Valid"]:
            assert attrs[""] in attrs["Valid"].split(","), f"{name}: its default breaks its own rule"


def test_the_layer_defaults_point_at_this_checkout():
    variables = _variables(_metadata())
    images = Path(variables["images"][""].replace("${DIRECTORY}", str(LAYER.parent))).resolve()
    assert (images / "install.sh").is_file()
    wheelhouse = Path(variables["wheelhouse"][""].replace("${DIRECTORY}", str(LAYER.parent))).resolve()
    assert wheelhouse == images.parent / "dist" / "wheelhouse", "where `make wheelhouse` writes"


def test_the_layer_installs_with_install_sh_inside_the_new_root():
    body = yaml.safe_load(LAYER.read_text())
    mmdebstrap = body["mmdebstrap"]
    assert {"python3", "python3-venv", "cloud-init"} <= set(mmdebstrap["packages"])
    hook = mmdebstrap["customize-hooks"][0]
    assert 'chroot "$1" /bin/sh /tmp/ocn-edge-install/images/install.sh --wheelhouse /tmp/ocn-edge-install/wheelhouse' in hook
    for variable in re.findall(r"\$IGconf_(\w+)", hook):
        prefix, _, name = variable.partition("_")
        assert prefix == "ocn" and name in _variables(_metadata()), variable
    assert mmdebstrap["cleanup-hooks"] == ['rm -rf "$1/tmp/ocn-edge-install"']


def test_cloud_init_reads_the_seed_from_the_boot_partition(tmp_path):
    """The second hook, run into an empty root, writes a cloud-init drop-in `cloud-init schema` accepts."""
    hook = yaml.safe_load(LAYER.read_text())["mmdebstrap"]["customize-hooks"][1]
    subprocess.run(["sh", "-c", hook, "sh", str(tmp_path)], check=True, timeout=10)
    written = tmp_path / "etc/cloud/cloud.cfg.d/90-ocn-edge-seed.cfg"
    config = yaml.safe_load(written.read_text())
    assert config == {"datasource_list": ["NoCloud", "None"],
                      "datasource": {"NoCloud": {"seedfrom": "file:///boot/firmware/"}}}
    cloud_init = require_tool("cloud-init")
    checked = tmp_path / "seed.cfg"
    checked.write_text("#cloud-config\n" + written.read_text())
    done = subprocess.run([cloud_init, "schema", "--config-file", str(checked)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_hooks_are_valid_shell():
    sh = require_tool("sh", package="dash")
    body = yaml.safe_load(LAYER.read_text())["mmdebstrap"]
    for hook in body["customize-hooks"] + body["cleanup-hooks"]:
        done = subprocess.run([sh, "-n", "-c", hook], capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, (hook, done.stderr)


def test_the_config_builds_the_layer_on_a_documented_base():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["include"] == {"file": "trixie-minbase.yaml"}, "a config rpi-image-gen ships"
    assert config["layer"] == {"app": "ocn-edge"}
    assert config["image"]["name"]
    declared = _variables(_metadata())
    assert set(config["ocn"]) <= set(declared), "the ocn section sets only variables the layer declares"
    assert config["ocn"]["slot"] in declared["slot"]["Valid"].split(",")


def test_install_sh_is_a_posix_shell_script():
    sh = require_tool("sh", package="dash")
    done = subprocess.run([sh, "-n", str(SOURCE.parent / "install.sh")], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
