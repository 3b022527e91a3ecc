"""README.md and docs/*.md name only things that exist: the commands in their shell blocks
and inline code (`python -m irl_lm.X`, `python scripts/X.py`, `make X`) with their flags,
config files and config fields, the `irl_lm` names their Python blocks import, and the files
and headings their links point at. Nothing here runs a command or imports a model: flags are
read from the sources with `ast`, and config files are loaded in-process."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"|", "||", "&", "&&", ";", ";;", "(", ")", "<", ">", ">>", "done", "then"}
# Flags every absl program has (absl.app and absl.logging define them).
ABSL_FLAGS = {
    "help",
    "helpshort",
    "helpfull",
    "helpxml",
    "flagfile",
    "undefok",
    "only_check_args",
    "pdb",
    "pdb_post_mortem",
    "run_with_pdb",
    "run_with_profiling",
    "profile_file",
    "use_cprofile_for_profiling",
    "logtostderr",
    "alsologtostderr",
    "log_dir",
    "v",
    "verbosity",
    "stderrthreshold",
    "showprefixforinfo",
    "logger_levels",
}
ARGPARSE_FLAGS = {"help"}
FORBIDDEN = {
    r"\.\./shared": "a path outside the repository",
    r"/work\b": "a path of one machine",
    r"\bissue \d+": "a tracker reference",
    r"PAPER\.md": "a file outside the repository",
    r"\bworkplace\b": "words about how the project is developed",
    r"\bsession\b": "words about how the project is developed",
}


# ----------------------------------------------------------------------------- the pages


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str


def code_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text().splitlines()
    start, language, body = None, "", []
    for number, line in enumerate(lines, 1):
        fence = re.match(r"\s*```\s*([\w+-]*)\s*$", line)
        if start is None and fence:
            start, language, body = number, fence.group(1).lower(), []
        elif start is not None and re.match(r"\s*```\s*$", line):
            blocks.append(Block(page, start, language, "\n".join(body)))
            start = None
        elif start is not None:
            body.append(line)
    assert start is None, f"{page.name}:{start}: a code block is not closed"
    return blocks


def prose(page: Path) -> str:
    """The page with its fenced code blocks blanked out (line numbers kept)."""
    blank = lambda match: "\n" * match.group(0).count("\n")
    return re.sub(r"^\s*```.*?^\s*```[ \t]*$", blank, page.read_text(), flags=re.S | re.M)


def inline_commands(page: Path) -> list[Block]:
    """Inline code spans of the prose that are commands (`python ...`, `make ...`)."""
    text, blocks = prose(page), []
    for match in re.finditer(r"`([^`\n]+)`", text):
        if re.match(r"(?:\w+=\S+\s+)*(?:\S*/)?(?:python3?|make|bash)\s", match.group(1)):
            line = text[: match.start()].count("\n") + 1
            blocks.append(Block(page, line - 1, "inline", match.group(1)))
    return blocks


def shell_blocks(page: Path) -> list[Block]:
    fenced = [b for b in code_blocks(page) if b.language in SHELL_LANGUAGES]
    return fenced + inline_commands(page)


@dataclasses.dataclass(frozen=True)
class Command:
    where: str  # page:line
    kind: str  # "module", "script" or "make"
    target: str  # irl_lm.X, scripts/X.py or the make target
    args: tuple[str, ...]


def shell_commands(block: Block) -> list[Command]:
    """The irl_lm, scripts/ and make invocations of a shell block."""
    text = re.sub(r"\\\n", " ", block.text)  # continuation lines
    commands = []
    for offset, line in enumerate(text.splitlines()):
        line = re.sub(r"^\s*\$ ", "", line)  # console prompts
        where = f"{block.page.relative_to(ROOT)}:{block.line + 1 + offset}"
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            rest = tokens[i + 1 :]
            end = next((j for j, t in enumerate(rest) if t in SEPARATORS), len(rest))
            if token == "make":
                targets = [t for t in rest[:end] if not t.startswith("-") and "=" not in t]
                commands.append(Command(where, "make", targets[0] if targets else "", ()))
            elif Path(token).name not in ("python", "python3") or not rest:
                continue
            elif rest[0] == "-m" and len(rest) > 1 and rest[1].startswith("irl_lm"):
                commands.append(Command(where, "module", rest[1], tuple(rest[2:end])))
            elif rest[0].startswith("scripts/"):
                commands.append(Command(where, "script", rest[0], tuple(rest[1:end])))
    return commands


@functools.cache
def all_commands() -> tuple[Command, ...]:
    return tuple(
        command
        for page in PAGES
        for block in shell_blocks(page)
        for command in shell_commands(block)
    )


# ----------------------------------------------------------------------------- the sources


def module_file(name: str) -> Path | None:
    """The source of an `irl_lm` module or package, from the file system."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@dataclasses.dataclass
class Flags:
    names: set[str] = dataclasses.field(default_factory=set)
    patterns: list[str] = dataclasses.field(default_factory=list)  # names built at run time
    absl: bool = False

    def accepts(self, name: str) -> bool:
        if name in self.names or any(re.fullmatch(p, name) for p in self.patterns):
            return True
        builtin = ABSL_FLAGS if self.absl else ARGPARSE_FLAGS
        return name in builtin or (self.absl and name.startswith("no") and name[2:] in self.names)


def _literal_strings(node: ast.AST, module: ast.Module) -> list[str] | None:
    """The strings of a literal tuple or list, or of a module-level name bound to one."""
    if isinstance(node, ast.Name):
        for statement in module.body:
            if isinstance(statement, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == node.id for t in statement.targets
            ):
                node = statement.value
                break
    try:
        values = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None
    return [v for v in values if isinstance(v, str)] if isinstance(values, tuple | list) else None


def _flag_names(node: ast.expr, loops: dict[str, list[str] | None]) -> tuple[list[str], str]:
    """(names, pattern) of a flag's name expression: a string, or an f-string over a loop
    variable (expanded when the loop runs over literal strings, else a regex)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value], ""
    if not isinstance(node, ast.JoinedStr):
        return [], ""  # unknown until run time: its flags count as undefined
    names, pattern = [""], ""
    for part in node.values:
        if isinstance(part, ast.Constant):
            names = [n + str(part.value) for n in names]
            pattern += re.escape(str(part.value))
            continue
        values = loops.get(part.value.id) if isinstance(part.value, ast.Name) else None
        names = [n + v for n in names for v in values] if values is not None else []
        pattern += ".+"
    return (names, "") if names else ([], pattern)


def _collect(node: ast.AST, module: ast.Module, flags: Flags, loops: dict) -> None:
    """Flag definitions under `node`: absl's `DEFINE_*("name", ...)` and argparse's
    `add_argument("--name", ...)`."""
    if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
        loops = loops | {node.target.id: _literal_strings(node.iter, module)}
    if isinstance(node, ast.Call):
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called.startswith("DEFINE") and node.args:
            flags.absl = True
            names, pattern = _flag_names(node.args[0], loops)
            flags.names.update(names)
            flags.patterns += [pattern] if pattern else []
        elif called == "add_argument":
            for arg in node.args:
                names, pattern = _flag_names(arg, loops)
                flags.names.update(n.lstrip("-") for n in names if n.startswith("-"))
                if pattern.startswith("\\-"):
                    flags.patterns.append(pattern.lstrip("\\-"))
    for child in ast.iter_child_nodes(node):
        _collect(child, module, flags, loops)


def _imported_source(module_name: str, near: Path) -> Path | None:
    if module_name.startswith("irl_lm"):
        return module_file(module_name)
    sibling = near.parent / f"{module_name}.py"  # scripts import each other by name
    return sibling if sibling.is_file() else None


@functools.cache
def defined_flags(path: Path) -> Flags:
    """The flags a program defines: everywhere in its own source, and inside the functions
    it imports from other modules (e.g. a shared `add_source_args`)."""
    module = ast.parse(path.read_text())
    flags = Flags()
    _collect(module, module, flags, {})
    for statement in module.body:
        if not isinstance(statement, ast.ImportFrom) or not statement.module:
            continue
        source = _imported_source(statement.module, path)
        if source is None:
            continue
        imported = ast.parse(source.read_text())
        wanted = {alias.name for alias in statement.names}
        for definition in imported.body:
            if isinstance(definition, ast.FunctionDef) and definition.name in wanted:
                _collect(definition, imported, flags, {})
    return flags


def load_file(path: Path):
    """A config file as a module (importable from the repository root, as the CLIs do)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def loaded_config(file: str, arg: str | None, sweep_arg: str | None, is_sweep: bool):
    """The config a command builds (for a sweep: its first point's), or why it fails."""
    try:
        module = load_file(ROOT / file)
        if is_sweep:
            points = module.sweep(sweep_arg)
            assert points, f"sweep({sweep_arg!r}) has no points"
            arg = ",".join(filter(None, [points[0].get("config_arg"), arg])) or None
        return module.get_config(arg), ""
    except Exception as e:  # noqa: BLE001 (any failure is the finding)
        return None, f"{type(e).__name__}: {e}"


def has_field(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False
    return True


@functools.cache
def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for match in re.finditer(r"^([\w.$()/ -]+?)\s*:(?!=)", text, re.M):
        targets.update(t for t in match.group(1).split() if re.fullmatch(r"\w[\w.-]*", t))
    return targets


# ----------------------------------------------------------------------------- the checks


def command_problems(command: Command) -> list[str]:
    where = f"{command.where}: {command.target}"
    if command.kind == "make":
        if command.target not in make_targets():
            return [f"{where}: no such target in the Makefile ({sorted(make_targets())})"]
        return []
    if command.kind == "module":
        source = module_file(command.target)
        if source is None:
            return [f"{where}: no such module under irl_lm/"]
    else:
        source = ROOT / command.target
        if not source.is_file():
            return [f"{where}: no such script"]
    flags = defined_flags(source)
    values = {}
    problems = []
    for arg in command.args:
        if not arg.startswith("--"):
            continue
        name, _, value = arg[2:].partition("=")
        values[name] = value
        if name.startswith("config.") and "config" in flags.names:
            continue  # checked against the config below
        if not flags.accepts(name):
            problems.append(f"{where}: --{name} is not a flag of {source.relative_to(ROOT)}")
    config_value = values.get("config", "")
    if not config_value.startswith("configs/"):
        return problems
    file, _, arg = config_value.partition(":")
    if not (ROOT / file).is_file():
        return [*problems, f"{where}: config file {file} does not exist"]
    is_sweep = command.target == "irl_lm.sweep"
    config, error = loaded_config(file, arg or None, values.get("sweep_arg"), is_sweep)
    if config is None:
        return [*problems, f"{where}: --config={config_value} does not load: {error}"]
    for name in values:
        if name.startswith("config.") and not has_field(config, name[len("config.") :]):
            problems.append(f"{where}: --{name}: {file} has no such field")
    return problems


def test_commands_run_real_modules_flags_and_configs():
    commands = all_commands()
    kinds = {kind: sum(c.kind == kind for c in commands) for kind in ("module", "script", "make")}
    assert kinds["module"] >= 20 and kinds["script"] >= 2 and kinds["make"] >= 2, kinds
    problems = [p for command in commands for p in command_problems(command)]
    assert not problems, "\n".join(problems)


def test_every_documented_cli_is_shown():
    """Each entry point the README's layout lists has a command somewhere in the docs."""
    shown = {c.target for c in all_commands() if c.kind == "module"}
    entry_points = ("main", "evaluate", "sample", "reward", "convert", "sweep", "report", "demo")
    missing = [f"irl_lm.{name}" for name in entry_points if f"irl_lm.{name}" not in shown]
    assert not missing, f"no command shows {missing}"


REPOSITORY_PATH = r"(?<![\w/.<])((?:irl_lm|configs|scripts|tests|experiments)/[\w./-]*)(?![\w<])"


def test_repository_paths_and_tests_exist():
    """Every repository path in the shell blocks and inline code (`irl_lm/learners/gail.py`,
    `configs/xsum.py:mode=full`), and every test a page names (`tests/X.py::test_y`)."""
    problems, checked = [], 0
    for page in PAGES:
        texts = [(b.line, b.text) for b in shell_blocks(page)]
        text = prose(page)
        for match in re.finditer(r"`([^`\n]+)`", text):
            texts.append((text[: match.start()].count("\n") + 1, match.group(1)))
        for line, code in texts:
            for path in re.findall(REPOSITORY_PATH, code):
                checked += 1
                if not (ROOT / path.rstrip(".")).exists():
                    problems.append(f"{page.relative_to(ROOT)}:{line}: {path} does not exist")
            for file, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", code):
                source = ROOT / file
                if source.is_file() and not re.search(rf"def {name}\b", source.read_text()):
                    problems.append(f"{page.relative_to(ROOT)}:{line}: {file} has no {name}")
    assert checked >= 50, checked
    assert not problems, "\n".join(problems)


def test_every_loss_metric_has_a_tensorboard_entry():
    """The metric keys the losses return (`iqlearn/td2`, ...) and the trainer's timings
    (`time/sample_s`) appear in docs/tensorboard.md as `train/<key>` or
    `eval/<name>/<key>`."""
    documented = (ROOT / "docs" / "tensorboard.md").read_text()
    keys = set()
    for path in (ROOT / "irl_lm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and path.parent.name == "losses":
                strings = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                keys.update(k for k in strings if re.fullmatch(r"[a-z_]+/[a-z_0-9]+", str(k)))
            elif isinstance(node, ast.Constant) and re.fullmatch(r"time/\w+", str(node.value)):
                keys.add(node.value)
    assert len(keys) >= 20, sorted(keys)
    tags = lambda key: (f"`train/{key}`", f"`eval/<name>/{key}`")
    missing = sorted(k for k in keys if not any(tag in documented for tag in tags(k)))
    assert not missing, f"docs/tensorboard.md does not list {missing}"


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(page), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_links_point_at_existing_files_and_headings():
    problems, checked = [], 0
    for page in PAGES:
        for target in re.findall(r"\[[^\]\n]*\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not file.exists():
                problems.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in github_anchors(file):
                problems.append(f"{where}: no heading #{anchor} in {file.name}")
    assert checked >= 30, checked
    assert not problems, "\n".join(problems)


def test_python_blocks_import_existing_names():
    problems, checked = [], 0
    for page in PAGES:
        for block in code_blocks(page):
            if block.language != "python":
                continue
            for node in ast.walk(ast.parse(block.text)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("irl_lm"):
                    imports = [(node.module, alias.name) for alias in node.names]
                elif isinstance(node, ast.Import):
                    imports = [(a.name, None) for a in node.names if a.name.startswith("irl_lm")]
                else:
                    continue
                for module, name in imports:
                    checked += 1
                    where = f"{page.relative_to(ROOT)}:{block.line}: {module}"
                    if module_file(module) is None:
                        problems.append(f"{where}: no such module")
                    elif name and not defines(module, name):
                        problems.append(f"{where}: defines no {name}")
    assert checked >= 3, checked
    assert not problems, "\n".join(problems)


def defines(module: str, name: str) -> bool:
    """Whether `module` has `name` at its top level, or a submodule of that name."""
    if module_file(f"{module}.{name}") is not None:
        return True
    tree = ast.parse(module_file(module).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found = {node.name}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found = {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            continue
        if name in found:
            return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_are_written_for_users(page):
    text, found = page.read_text(), []
    for pattern, why in FORBIDDEN.items():
        for match in re.finditer(pattern, text, re.I):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{page.relative_to(ROOT)}:{line}: {match.group(0)!r} ({why})")
    assert not found, "\n".join(found)
