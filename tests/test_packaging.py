"""Static checks of the Slicer extension's packaging: what the Extensions Index and Slicer's build need.

Each check is a function returning a list of problems, run on the real repository (must be empty) and on
a copy with a deliberate mistake (must report it), so none of them can pass vacuously.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from LegSegNetLib.core.tissues import TISSUES

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = "LegSegNet"
INDEX_KEYS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "dicom_support_rule",
    "build_subdirectory",
    "enabled",
    "tier",
}  # catalog entry schema v1.0.2
INDEX_REQUIRED = {"$schema", "category", "scm_url"}
S4EXT_REQUIRED = (
    "scm",
    "scmurl",
    "depends",
    "build_subdirectory",
    "homepage",
    "contributors",
    "category",
    "iconurl",
    "status",
    "description",
    "screenshoturls",
    "enabled",
)
EXTENSION_VARIABLES = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)
RAW_URL = re.compile(r"^https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/(.+)$")
# Widget classes the parameter node wrapper can bind to each parameter type (Slicer's guiConnectors.py).
BINDABLE = {
    "int": {"QSpinBox", "QSlider"},
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "choice": {"QComboBox", "ctkComboBox"},
    "node": {"qMRMLNodeComboBox"},
}


# ---------------------------------------------------------------------- parsing helpers
def cmake_list(text: str, variable: str, module_name: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    if not match:
        return []
    body = re.sub(r"#[^\n]*", "", match.group(1))
    return [token.replace("${MODULE_NAME}", module_name) for token in body.split()]


def cmake_set(text: str, variable: str) -> str | None:
    match = re.search(rf'set\(\s*{variable}\s+"([^"]*)"\s*\)', text)
    return match.group(1) if match else None


def read_s4ext(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
    return fields


def depends_tokens(value: str | None) -> list[str]:
    tokens = (value or "").replace(";", " ").split()
    return [] if tokens in ([], ["NA"]) else tokens


def ui_widgets(path: Path) -> dict[str, tuple[str, str | None]]:
    """objectName -> (class, SlicerParameterName or None) for every widget in a .ui file."""
    widgets = {}
    for widget in ElementTree.parse(path).iter("widget"):
        parameter = None
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameter = prop.findtext("string")
        widgets[widget.get("name")] = (widget.get("class"), parameter)
    return widgets


def parameter_fields(module_source: str, class_name: str = f"{EXTENSION}ParameterNode") -> dict[str, str]:
    """Parameter node field -> kind ('int', 'bool', 'str', 'choice', 'node') from its annotations."""
    tree = ast.parse(module_source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            decorators = {ast.unparse(d) for d in node.decorator_list}
            if "parameterNodeWrapper" not in decorators:
                return {}
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    text = ast.unparse(item.annotation)
                    if "Choice(" in text:
                        kind = "choice"
                    elif text.startswith("vtkMRML") or "vtkMRML" in text:
                        kind = "node"
                    else:
                        kind = re.sub(r"Annotated\[(\w+),.*", r"\1", text)
                    fields[item.target.id] = kind
            return fields
    return {}


# ---------------------------------------------------------------------- checks
def check_module_files(root: Path) -> list[str]:
    module_dir = root / EXTENSION
    text = (module_dir / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS", EXTENSION)
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES", EXTENSION)
    problems = []
    on_disk = sorted(
        p.relative_to(module_dir).as_posix()
        for p in module_dir.rglob("*.py")
        if not any(
            part == "__pycache__" or part.endswith(".egg-info") or part == "Testing"
            for part in p.relative_to(module_dir).parts
        )
    )
    for path in on_disk:
        if path not in scripts:
            problems.append(f"{path} is not in MODULE_PYTHON_SCRIPTS")
    for path in scripts:
        if not (module_dir / path).is_file():
            problems.append(f"MODULE_PYTHON_SCRIPTS lists {path}, which does not exist")
    resource_files = sorted(
        p.relative_to(module_dir).as_posix() for p in (module_dir / "Resources").rglob("*") if p.is_file()
    )
    for path in resource_files:
        if path not in resources:
            problems.append(f"resource {path} is not in MODULE_PYTHON_RESOURCES")
    for path in resources:
        if not (module_dir / path).is_file():
            problems.append(f"MODULE_PYTHON_RESOURCES lists {path}, which does not exist")
    if not re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS.*?\)", text, re.S):
        problems.append("slicerMacroBuildScriptedModule(... WITH_GENERIC_TESTS) missing")
    if not re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S):
        problems.append("slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) missing under BUILD_TESTING")
    testing = module_dir / "Testing" / "CMakeLists.txt"
    if not testing.is_file() or "add_subdirectory(Python)" not in testing.read_text():
        problems.append("Testing/CMakeLists.txt must add_subdirectory(Python)")
    if not (module_dir / "Testing" / "Python" / "CMakeLists.txt").is_file():
        problems.append("Testing/Python/CMakeLists.txt missing")
    if problems and any("not in MODULE_PYTHON_SCRIPTS" in p for p in problems):
        listing = "\n".join(
            f"  ${{MODULE_NAME}}{p[len(EXTENSION) :]}" if p.startswith(EXTENSION) else f"  {p}" for p in on_disk
        )
        problems.append("MODULE_PYTHON_SCRIPTS should read:\n" + listing)
    return problems


def check_widget_names(root: Path) -> list[str]:
    module_dir = root / EXTENSION
    source = (module_dir / f"{EXTENSION}.py").read_text()
    widgets = ui_widgets(module_dir / "Resources" / "UI" / f"{EXTENSION}.ui")
    problems = []
    for name in sorted(set(re.findall(r"self\.ui\.(\w+)", source))):
        if name not in widgets:
            problems.append(f"{EXTENSION}.py uses self.ui.{name}, which the .ui does not define")
    fields = parameter_fields(source)
    if not fields:
        problems.append(f"no @parameterNodeWrapper class {EXTENSION}ParameterNode in {EXTENSION}.py")
    bound = {}
    for name, (cls, parameter) in widgets.items():
        if parameter is None:
            continue
        if parameter not in fields:
            problems.append(f"widget {name} is bound to '{parameter}', which the parameter node does not have")
            continue
        bound[parameter] = name
        if cls not in BINDABLE.get(fields[parameter], set()):
            problems.append(f"widget {name} ({cls}) cannot be bound to {fields[parameter]} parameter '{parameter}'")
    for field_name in fields:
        if field_name not in bound and not re.search(rf"\._parameterNode\.{field_name}\b|\bp\.{field_name}\b", source):
            problems.append(f"parameter '{field_name}' is neither bound to a widget nor used in {EXTENSION}.py")
    return problems


def check_module_classes(root: Path) -> list[str]:
    tree = ast.parse((root / EXTENSION / f"{EXTENSION}.py").read_text())
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    expected = {
        EXTENSION: "ScriptedLoadableModule",
        f"{EXTENSION}Widget": "ScriptedLoadableModuleWidget",
        f"{EXTENSION}Logic": "ScriptedLoadableModuleLogic",
        f"{EXTENSION}Test": "ScriptedLoadableModuleTest",
    }
    problems = [f"class {name}({base}) missing" for name, base in expected.items() if base not in classes.get(name, [])]
    test_source = ast.unparse(
        next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{EXTENSION}Test")
    )
    if "selftest.run_selftest" not in test_source:
        problems.append(f"{EXTENSION}Test does not run LegSegNetLib.slicer_logic.selftest")
    return problems


def check_extension_description(root: Path) -> list[str]:
    cmake = (root / "CMakeLists.txt").read_text()
    problems = []
    project = re.search(r"project\(\s*([^\s)]+)", cmake)
    if not project or project.group(1) != EXTENSION:
        problems.append(f"top-level project() name must be {EXTENSION}")
    for variable in EXTENSION_VARIABLES:
        if not cmake_set(cmake, variable):
            problems.append(f"{variable} is not set in CMakeLists.txt")
    for line in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        f"add_subdirectory({EXTENSION})",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        if line not in cmake:
            problems.append(f"CMakeLists.txt lacks {line}")
    if EXTENSION.lower().startswith("slicer"):
        problems.append("the extension name must not start with 'Slicer'")
    if not (root / "LICENSE").is_file():
        problems.append("LICENSE file missing")

    s4ext_path = root / f"{EXTENSION}.s4ext"
    index_path = root / f"{EXTENSION}.json"
    if not s4ext_path.is_file():
        return problems + [f"{s4ext_path.name} missing"]
    if not index_path.is_file():
        return problems + [f"{index_path.name} missing"]
    s4ext = read_s4ext(s4ext_path)
    for key in S4EXT_REQUIRED:
        if not s4ext.get(key):
            problems.append(f".s4ext field '{key}' is missing or empty")
    pairs = {
        "homepage": "EXTENSION_HOMEPAGE",
        "category": "EXTENSION_CATEGORY",
        "iconurl": "EXTENSION_ICONURL",
        "description": "EXTENSION_DESCRIPTION",
        "contributors": "EXTENSION_CONTRIBUTORS",
        "screenshoturls": "EXTENSION_SCREENSHOTURLS",
    }
    for key, variable in pairs.items():
        if s4ext.get(key) != cmake_set(cmake, variable):
            problems.append(f".s4ext {key} '{s4ext.get(key)}' differs from {variable} '{cmake_set(cmake, variable)}'")
    depends = depends_tokens(cmake_set(cmake, "EXTENSION_DEPENDS"))
    if depends_tokens(s4ext.get("depends")) != depends:
        problems.append(f".s4ext depends {s4ext.get('depends')!r} differs from EXTENSION_DEPENDS {depends}")

    index = json.loads(index_path.read_text())
    for key in INDEX_REQUIRED - set(index):
        problems.append(f"{index_path.name} lacks '{key}'")
    for key in set(index) - INDEX_KEYS:
        problems.append(f"{index_path.name} has '{key}', which the catalog schema does not allow")
    if "slicer-extension-catalog-entry-schema" not in str(index.get("$schema", "")):
        problems.append(f"{index_path.name} $schema is not Slicer's catalog entry schema")
    if index.get("category") != cmake_set(cmake, "EXTENSION_CATEGORY"):
        problems.append(f"{index_path.name} category differs from EXTENSION_CATEGORY")
    if sorted(index.get("build_dependencies", [])) != sorted(depends):
        problems.append(f"{index_path.name} build_dependencies {index.get('build_dependencies')} != EXTENSION_DEPENDS")
    scm_url = str(index.get("scm_url", ""))
    homepage = (cmake_set(cmake, "EXTENSION_HOMEPAGE") or "").rstrip("/")
    if scm_url.removesuffix(".git").rstrip("/") != homepage:
        problems.append(f"{index_path.name} scm_url {scm_url} is not the homepage repository {homepage}")
    if s4ext.get("scmurl", "").removesuffix(".git") != scm_url.removesuffix(".git"):
        problems.append(".s4ext scmurl differs from the index scm_url")
    if "slicer" not in scm_url.rstrip("/").split("/")[-1].lower():
        problems.append("the repository name should contain 'Slicer' (Extensions Index convention)")
    repo = "/".join(homepage.split("/")[-2:])
    for url in [cmake_set(cmake, "EXTENSION_ICONURL") or ""] + (
        cmake_set(cmake, "EXTENSION_SCREENSHOTURLS") or ""
    ).split():
        match = RAW_URL.match(url)
        if not match or f"{match.group(1)}/{match.group(2)}" != repo:
            problems.append(f"{url} is not a raw file URL in {repo}")
        elif not (root / match.group(4)).is_file():
            problems.append(f"{url} points to {match.group(4)}, which is not in the repository")
    return problems


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", header[16:24])


# ---------------------------------------------------------------------- tests on the real repository
def test_every_python_file_and_resource_is_packaged():
    problems = check_module_files(ROOT)
    assert not problems, "\n".join(problems)


def test_every_widget_name_and_parameter_binding_exists_in_the_ui():
    problems = check_widget_names(ROOT)
    assert not problems, "\n".join(problems)


def test_module_file_follows_the_scripted_module_template():
    problems = check_module_classes(ROOT)
    assert not problems, "\n".join(problems)
    compile((ROOT / EXTENSION / f"{EXTENSION}.py").read_text(), f"{EXTENSION}.py", "exec")


def test_extension_description_is_complete_and_consistent():
    problems = check_extension_description(ROOT)
    assert not problems, "\n".join(problems)


def test_icon_is_a_128_pixel_png():
    assert png_size(ROOT / EXTENSION / "Resources" / "Icons" / f"{EXTENSION}.png") == (128, 128)


def test_library_modules_import_no_qt_at_module_level():
    """The logic must load with slicer-core (no Qt): no top-level qt/ctk/slicer.util import in LegSegNetLib."""
    offenders = []
    for path in sorted((ROOT / EXTENSION / f"{EXTENSION}Lib").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] in ("qt", "ctk") or n in ("slicer.util", "slicer.ScriptedLoadableModule")
            ]
    assert not offenders, offenders


def test_terminology_file_loads_in_slicer_and_matches_the_tissues():
    import slicer

    path = ROOT / EXTENSION / "Resources" / f"{EXTENSION}.term.json"
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(path))
    assert context == json.loads(path.read_text())["SegmentationCategoryTypeContextName"]
    types = [t for c in json.loads(path.read_text())["SegmentationCodes"]["Category"] for t in c["Type"]]
    assert {t["3dSlicerLabel"]: tuple(t["recommendedDisplayRGBValue"]) for t in types} == {
        t.key: t.rgb for t in TISSUES
    }
    assert all(t["CodingSchemeDesignator"] == "SCT" and t["CodeValue"].isdigit() for t in types)
    assert len({t["CodeValue"] for t in types}) == len(types)  # four distinct concepts


# ---------------------------------------------------------------------- the checks catch mistakes
@pytest.fixture()
def repo_copy(tmp_path) -> Path:
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("CMakeLists.txt", f"{EXTENSION}.s4ext", f"{EXTENSION}.json", "LICENSE"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / EXTENSION, copy / EXTENSION, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if (ROOT / "Screenshots").is_dir():
        shutil.copytree(ROOT / "Screenshots", copy / "Screenshots")
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_copy_is_clean(repo_copy):
    assert check_module_files(repo_copy) == [] and check_widget_names(repo_copy) == []
    assert check_extension_description(repo_copy) == []


def test_a_new_python_file_missing_from_cmake_is_caught(repo_copy):
    (repo_copy / EXTENSION / f"{EXTENSION}Lib" / "engines" / "brand_new.py").write_text("x = 1\n")
    problems = check_module_files(repo_copy)
    assert any("engines/brand_new.py is not in MODULE_PYTHON_SCRIPTS" in p for p in problems)


def test_a_listed_file_that_is_gone_is_caught(repo_copy):
    (repo_copy / EXTENSION / f"{EXTENSION}Lib" / "slicer_logic" / "tables.py").unlink()
    assert any("slicer_logic/tables.py, which does not exist" in p for p in check_module_files(repo_copy))


def test_an_unlisted_resource_is_caught(repo_copy):
    (repo_copy / EXTENSION / "Resources" / "Icons" / "extra.png").write_bytes(b"x")
    assert any(
        "Resources/Icons/extra.png is not in MODULE_PYTHON_RESOURCES" in p for p in check_module_files(repo_copy)
    )


def test_a_widget_missing_from_the_ui_is_caught(repo_copy):
    _edit(repo_copy / EXTENSION / "Resources" / "UI" / f"{EXTENSION}.ui", 'name="autoRangeButton"', 'name="autoButton"')
    assert any("self.ui.autoRangeButton" in p for p in check_widget_names(repo_copy))


def test_a_binding_to_an_unknown_parameter_or_wrong_widget_is_caught(repo_copy):
    ui = repo_copy / EXTENSION / "Resources" / "UI" / f"{EXTENSION}.ui"
    _edit(ui, "<string>folds</string>", "<string>foldz</string>")
    _edit(ui, '<widget class="QSpinBox" name="batchSizeSpinBox">', '<widget class="QLineEdit" name="batchSizeSpinBox">')
    problems = check_widget_names(repo_copy)
    assert any("'foldz'" in p for p in problems)
    assert any("batchSizeSpinBox (QLineEdit) cannot be bound to int" in p for p in problems)


@pytest.mark.parametrize(
    "file, old, new, expected",
    [
        (f"{EXTENSION}.s4ext", "\ncategory Segmentation", "\ncategory", "'category' is missing"),
        (f"{EXTENSION}.s4ext", "depends PyTorch", "depends NA", "differs from EXTENSION_DEPENDS"),
        ("CMakeLists.txt", 'EXTENSION_DEPENDS "PyTorch"', 'EXTENSION_DEPENDS "PyTorch SlicerRT"', "build_dependencies"),
        ("CMakeLists.txt", "project(LegSegNet)", "project(SlicerLegSegNet)", "project() name"),
        (
            "CMakeLists.txt",
            'https://github.com/legsegnet/SlicerLegSegNet")',
            'https://github.com/legsegnet/Other")',
            "homepage",
        ),
        (f"{EXTENSION}.json", '"category": "Segmentation"', '"category": "Quantification"', "category differs"),
        (f"{EXTENSION}.json", '"scm_url"', '"scmurl"', "lacks 'scm_url'"),
        ("CMakeLists.txt", "/main/Screenshots/1.png", "/main/Screenshots/9.png", "not in the repository"),
    ],
)
def test_description_mistakes_are_caught(repo_copy, file, old, new, expected):
    _edit(repo_copy / file, old, new)
    problems = check_extension_description(repo_copy)
    assert any(expected in p for p in problems), problems


def test_slicer_api_names_used_by_the_widget_exist():
    """slicer.util functions and MRML classes named in LegSegNet.py exist in Slicer's own code (slicer-core 5.13)."""
    import slicer

    source = (ROOT / EXTENSION / f"{EXTENSION}.py").read_text()
    util_names = sorted(set(re.findall(r"slicer\.util\.(\w+)", source)))
    mrml_names = sorted(set(re.findall(r"slicer\.(vtk\w+)", source)))
    assert util_names and mrml_names
    assert [n for n in util_names if not hasattr(slicer.util, n)] == []
    assert [n for n in mrml_names if not hasattr(slicer, n)] == []
    for constant in re.findall(r"slicer\.vtkMRMLLayoutNode\.(\w+)", source):
        assert hasattr(slicer.vtkMRMLLayoutNode, constant), constant


# ---------------------------------------------------------------------- the widget, read (Qt cannot run here)
QT_SPIN_BOX_DEFAULTS = (0, 99)  # QSpinBox's minimum and maximum when the .ui sets none


def _module_tree(root: Path) -> ast.Module:
    return ast.parse((root / EXTENSION / f"{EXTENSION}.py").read_text())


def _int_constants(tree: ast.Module) -> dict[str, int]:
    return {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)
    }


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _method(tree: ast.Module, class_name: str, method: str) -> ast.FunctionDef | None:
    return next((n for n in _class(tree, class_name).body if isinstance(n, ast.FunctionDef) and n.name == method), None)


def spin_box_limits(root: Path) -> dict[str, tuple]:
    """parameter -> ((.ui minimum, maximum), (annotation Minimum, Maximum)) for each int bound to a QSpinBox."""
    tree = _module_tree(root)
    constants = _int_constants(tree)
    annotations = {}
    for item in _class(tree, f"{EXTENSION}ParameterNode").body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            bounds = {}
            for call in ast.walk(item.annotation):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id in ("Minimum", "Maximum")
                ):
                    value = call.args[0]
                    bounds[call.func.id] = value.value if isinstance(value, ast.Constant) else constants.get(value.id)
            annotations[item.target.id] = (bounds.get("Minimum"), bounds.get("Maximum"))
    limits = {}
    for widget in ElementTree.parse(root / EXTENSION / "Resources" / "UI" / f"{EXTENSION}.ui").iter("widget"):
        if widget.get("class") != "QSpinBox":
            continue
        properties = {prop.get("name"): prop for prop in widget.findall("property")}
        if "SlicerParameterName" not in properties:
            continue
        ui = tuple(
            int(properties[k].findtext("number")) if k in properties else default
            for k, default in zip(("minimum", "maximum"), QT_SPIN_BOX_DEFAULTS)
        )
        name = properties["SlicerParameterName"].findtext("string")
        limits[name] = (ui, annotations.get(name))
    return limits


def check_spin_box_limits(root: Path) -> list[str]:
    """The parameter node's GUI connection sets a spin box's range from the annotation, 2^31-1 when there is
    no Maximum: each bound spin box's annotation must carry the .ui's minimum and maximum."""
    return [
        f"parameter '{name}': .ui range {ui} but annotation Minimum/Maximum {annotated}"
        for name, (ui, annotated) in spin_box_limits(root).items()
        if ui != annotated
    ]


def failure_returns_after_try_with_error_display(tree: ast.AST) -> list[int]:
    """Lines of a `return VALUE` right after a `with slicer.util.tryWithErrorDisplay(...)` block: that context
    manager shows the error and re-raises, so such a return (meant for the failure) is never reached."""
    lines = []
    for node in ast.walk(tree):
        for body in (getattr(node, "body", None), getattr(node, "orelse", None), getattr(node, "finalbody", None)):
            if not isinstance(body, list):
                continue
            for before, after in zip(body, body[1:]):
                if (
                    isinstance(before, ast.With)
                    and any("tryWithErrorDisplay" in ast.unparse(i.context_expr) for i in before.items)
                    and isinstance(after, ast.Return)
                    and after.value is not None
                ):
                    lines.append(after.lineno)
    return lines


def check_widget_rules(root: Path) -> list[str]:
    """What the widget must do, read from its source (each rule itself is tested in test_widget_rules.py and
    test_package_setup.py)."""
    tree = _module_tree(root)
    source = ast.unparse(tree)
    problems = []
    module_init = ast.unparse(_method(tree, EXTENSION, "__init__"))
    if not re.search(r"slicer\.app\.connect\('startupCompleted\(\)', registerTerminology\)", module_init):
        problems.append("the terminology is not registered at Slicer's startup (module __init__)")
    reload = _method(tree, f"{EXTENSION}Widget", "onReload")
    if reload is None or not re.search(
        r"forget_library_modules\('LegSegNetLib'\).*ScriptedLoadableModuleWidget\.onReload", ast.unparse(reload), re.S
    ):
        problems.append("onReload does not drop the library package before Slicer's reload")
    defaults = {
        item.target.id: item.value
        for item in _class(tree, f"{EXTENSION}ParameterNode").body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    }
    if not (isinstance(defaults.get("showRange"), ast.Constant) and defaults["showRange"].value is False):
        problems.append("showRange defaults to True: opening the module adds a range ROI to the scene")
    modified = ast.unparse(_method(tree, f"{EXTENSION}Widget", "_onParameterNodeModified"))
    if "self._rangeSync.update(" not in modified:
        problems.append("the slice range is not kept through widget_rules.SliceRangeSync")
    if "self._syncModelCombo()" not in modified:
        problems.append("the model combo box is not synced from the parameter node")
    if "plan_install(" in source or "PackageSetup(" not in ast.unparse(
        _method(tree, f"{EXTENSION}Widget", "_withDependencies")
    ):
        problems.append("dependencies are not set up through packages.PackageSetup")
    if "_exportFolderFor(" not in ast.unparse(_method(tree, f"{EXTENSION}Widget", "onExport")):
        problems.append("Export does not choose its folder through widget_rules.export_folder")
    install = ast.unparse(_method(tree, f"{EXTENSION}Widget", "onInstallModelFromFile"))
    if "plans.json" not in install or "model_install_source(" not in install:
        problems.append("Install from file cannot choose a model folder (by its plans.json)")
    problems += [
        f"{EXTENSION}.py:{line}: return after tryWithErrorDisplay is never reached on failure"
        for line in failure_returns_after_try_with_error_display(tree)
    ]
    return problems


def test_spin_box_limits_of_the_ui_survive_the_parameter_node_connection():
    problems = check_spin_box_limits(ROOT)
    assert not problems, "\n".join(problems)
    assert {"firstSlice", "lastSlice", "batchSize", "reviewSeed", "trainEpochs"} <= set(spin_box_limits(ROOT))


def test_the_widget_follows_its_rules():
    problems = check_widget_rules(ROOT)
    assert not problems, "\n".join(problems)


def test_a_spin_box_limit_missing_from_the_annotation_is_caught(repo_copy):
    _edit(
        repo_copy / EXTENSION / f"{EXTENSION}.py",
        "Annotated[int, Minimum(0), Maximum(999999)]",
        "Annotated[int, Minimum(0)]",
    )
    assert any("'reviewSeed'" in p for p in check_spin_box_limits(repo_copy))


def test_a_widget_rule_broken_is_caught(repo_copy):
    _edit(repo_copy / EXTENSION / f"{EXTENSION}.py", "showRange: bool = False", "showRange: bool = True")
    _edit(
        repo_copy / EXTENSION / f"{EXTENSION}.py",
        "        self._syncModelCombo()\n        self._updateReviewDisplay()",
        "        self._updateReviewDisplay()",
    )
    problems = check_widget_rules(repo_copy)
    assert any("showRange" in p for p in problems) and any("model combo" in p for p in problems)


def test_a_return_meant_for_a_failure_after_try_with_error_display_is_caught():
    # the shape of the old dependency check: `return False` after the block is never reached on failure
    old = ast.parse(
        "def f():\n    with slicer.util.tryWithErrorDisplay('x'):\n        install()\n        return True\n"
        "    return False\n"
    )
    assert failure_returns_after_try_with_error_display(old) == [5]
