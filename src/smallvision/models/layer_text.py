"""A layer list as text and as JSON: the written form a recipe, the command line and a file use
(`Conv2D(32, (3, 3), activation='relu') MaxPooling2D(2) ...`), and the form model.json keeps.

The text is read as data: Python's own tokenizer and `ast` parse it, and only literals are taken
(numbers, strings, tuples, lists, True/False/None, and arithmetic on numbers so that `1./255` reads
as Keras users write it). Nothing in it is ever evaluated or run.
"""

import ast
import io
import operator
import tokenize

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.models.layers import REQUIRED, VOCABULARY, Input, Layer, Pooling

ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
NAMED_CONSTANTS = {"True": True, "False": False, "None": None}


def parse_layers(text: str | list[str], where: str = "layers") -> list[Layer]:
    """The layers a text names, in order: calls separated by spaces, newlines or commas, `#` comments
    allowed, `layers.` or `keras.layers.` before a name allowed (pasted Keras code)."""
    if isinstance(text, list):
        text = "\n".join(text)
    segments = top_level_calls(text, where)
    if not segments:
        raise SmallvisionError(f"{where}: no layers given")
    return [layer_from_node(parse_call(segment, where), where) for segment in segments]


def top_level_calls(text: str, where: str) -> list[str]:
    """The text of each top-level expression, found with Python's tokenizer (so brackets and commas
    inside strings and nested lists are never mistaken for separators)."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    segments, depth, begin = [], 0, None
    skipped = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
               tokenize.ENDMARKER, tokenize.ENCODING)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as err:
        raise SmallvisionError(f"{where}: cannot be read ({err.args[0]}); check the brackets and quotes") from None
    for index, token in enumerate(tokens):
        if token.type in skipped or (depth == 0 and token.string in (",", ";")):
            continue
        offset = starts[token.start[0] - 1] + token.start[1]
        if begin is None:
            begin = offset
        if token.string in "([{" and token.type == tokenize.OP:
            depth += 1
        elif token.string in ")]}" and token.type == tokenize.OP:
            depth -= 1
            if depth < 0:
                raise SmallvisionError(f"{where}: a {token.string!r} closes nothing, near {text[begin:offset + 1]!r}")
        following = next((t for t in tokens[index + 1:] if t.type not in skipped), None)
        ends = depth == 0 and (following is None or following.string in (",", ";")
                               or (following.type == tokenize.NAME and token.string != "."))
        if ends:
            segments.append(text[begin:starts[token.end[0] - 1] + token.end[1]])
            begin = None
    if depth:
        raise SmallvisionError(f"{where}: a bracket is not closed")
    return segments


def parse_call(segment: str, where: str) -> ast.Call:
    try:
        node = ast.parse(segment.strip(), mode="eval").body
    except SyntaxError as err:
        raise SmallvisionError(f"{where}: cannot read {segment.strip()!r} ({err.msg})") from None
    if isinstance(node, (ast.Name, ast.Attribute)):  # `Flatten` written without brackets
        node = ast.Call(func=node, args=[], keywords=[])
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Call)):
        node = node.args[0]  # model.add(layers.Conv2D(...)), pasted from Keras code
    if not isinstance(node, ast.Call):
        raise SmallvisionError(f"{where}: {segment.strip()!r} is not a layer; write one as Name(arguments), "
                               f"e.g. Conv2D(32, 3, activation='relu')")
    return node


def layer_name(node: ast.expr, where: str) -> str:
    """`Conv2D`, `layers.Conv2D` or `keras.layers.Conv2D` -> "Conv2D"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
        prefix = ast.unparse(node.value)
        if prefix in ("layers", "keras.layers", "tf.keras.layers", "sv.layers", "smallvision.layers"):
            return node.attr
    raise SmallvisionError(f"{where}: {ast.unparse(node)!r} is not a layer's name")


def layer_from_node(node: ast.Call, where: str) -> Layer:
    name = layer_name(node.func, where)
    if name not in VOCABULARY:
        raise unknown_name("layer", name, list(VOCABULARY))
    args = [value_of(arg, f"{name} argument {i + 1}", where) for i, arg in enumerate(node.args)]
    kwargs = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise SmallvisionError(f"{where}: {name}: write each argument by name (no **)")
        kwargs[keyword.arg] = value_of(keyword.value, f"{name} {keyword.arg}", where)
    return VOCABULARY[name](*args, **kwargs)


def value_of(node: ast.expr, what: str, where: str):
    """A literal's value, or layers where a list of calls is given (Residual([...]))."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in NAMED_CONSTANTS:
        return NAMED_CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = value_of(node.operand, what, where)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = value_of(node.left, what, where), value_of(node.right, what, where)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
            try:
                return ARITHMETIC[type(node.op)](left, right)
            except ZeroDivisionError:
                raise SmallvisionError(f"{where}: {what}: division by zero") from None
    if isinstance(node, (ast.Tuple, ast.List)):
        if node.elts and all(isinstance(item, ast.Call) for item in node.elts):
            return [layer_from_node(item, where) for item in node.elts]
        values = [value_of(item, what, where) for item in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    raise SmallvisionError(f"{where}: {what} must be a literal (a number, a string, a tuple, True, False or None), "
                           f"got {ast.unparse(node)!r}")


# --- printing


def layer_source(layer: Layer) -> str:
    """The written form of one layer: its required arguments in order, then those not at Keras' default."""
    parts = []
    for index, (argument, default, _) in enumerate(layer.ARGS):
        value = layer.config[argument]
        if argument == "layers":
            parts.append("[" + ", ".join(layer_source(inner) for inner in value) + "]")
        elif isinstance(layer, Input):
            parts.append(f"shape={literal(value)}")  # Keras takes Input's shape by name only
        elif default is REQUIRED or (index == 0 and isinstance(layer, Pooling)):  # MaxPooling2D((2, 2)), as written
            parts.append(literal(value))
        elif value != default:
            parts.append(f"{argument}={literal(value)}")
    if layer.input_shape_hint:
        parts.append(f"input_shape={literal(layer.input_shape_hint)}")
    if layer.layer_name:
        parts.append(f"name={layer.layer_name!r}")
    return f"{type(layer).__name__}({', '.join(parts)})"


def literal(value) -> str:
    """Python's own spelling of a literal, which parse_layers reads back to the same value."""
    return repr(value)


def layers_source(layers: list[Layer]) -> list[str]:
    """One written layer per item: a recipe's `layers`, readable and parsed back to the same network."""
    return [layer_source(layer) for layer in layers]


# --- JSON, as model.json keeps it


def layer_to_json(layer: Layer) -> dict:
    config = {}
    for argument, value in layer.config.items():
        config[argument] = [layer_to_json(inner) for inner in value] if argument == "layers" else jsonable(value)
    entry = {"class_name": type(layer).__name__, "config": config}
    if layer.layer_name:
        entry["name"] = layer.layer_name
    return entry


def jsonable(value):
    return [jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def layers_to_json(layers: list[Layer]) -> list[dict]:
    return [layer_to_json(layer) for layer in layers]


def layer_from_json(entry: dict, where: str) -> Layer:
    try:
        kind, config = entry["class_name"], dict(entry["config"])
    except (KeyError, TypeError):
        raise SmallvisionError(f"{where}: a layer entry needs class_name and config, got {entry!r}") from None
    if kind not in VOCABULARY:
        raise unknown_name("layer", str(kind), list(VOCABULARY))
    if "layers" in config:
        config["layers"] = [layer_from_json(inner, where) for inner in config["layers"]]
    return VOCABULARY[kind](name=entry.get("name"), **config)


def layers_from_json(entries: list[dict], where: str = "model.json") -> list[Layer]:
    if not isinstance(entries, list):
        raise SmallvisionError(f"{where}: layers must be a list")
    return [layer_from_json(entry, where) for entry in entries]
