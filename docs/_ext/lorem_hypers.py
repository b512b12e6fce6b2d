"""Sphinx directive rendering the hyperparameters documented in ``documentation.py``.

``.. lorem-hypers:: ModelHypers`` reads ``src/lorem_mta/documentation.py`` with
:py:mod:`ast` (no import needed) and renders every field of the ``TypedDict`` class
``ModelHypers`` with its type, its default and its docstring, in source order. The
docstrings are the ones metatrain shows to ``mtt`` users, so the page and the
command-line tool never disagree.
"""

import ast
import inspect
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

SOURCE = Path(__file__).resolve().parents[2] / "src" / "lorem_mta" / "documentation.py"


def hyper_fields(class_name, source=SOURCE):
    """Fields of one ``TypedDict`` class of ``documentation.py``.

    :param class_name: name of the class, e.g. ``"ModelHypers"``
    :param source: path to ``documentation.py``
    :return: the class docstring and a list of ``(name, type, default, docstring)``;
        ``default`` is ``None`` for fields without one
    """
    tree = ast.parse(Path(source).read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            break
    else:
        raise ValueError(f"no class {class_name} in {source}")
    fields = []
    body = node.body
    for index, statement in enumerate(body):
        if not isinstance(statement, ast.AnnAssign):
            continue
        docstring = ""
        if index + 1 < len(body):
            following = body[index + 1]
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docstring = inspect.cleandoc(str(following.value.value))
        default = None if statement.value is None else ast.unparse(statement.value)
        fields.append(
            (statement.target.id, ast.unparse(statement.annotation), default, docstring)
        )
    return inspect.cleandoc(ast.get_docstring(node) or ""), fields


class HypersDirective(SphinxDirective):
    """``.. lorem-hypers:: ClassName``: one entry per field of the class."""

    required_arguments = 1
    has_content = False

    def run(self):
        """Build the nodes of the directive."""
        self.env.note_dependency(str(SOURCE))
        class_name = self.arguments[0]
        summary, fields = hyper_fields(class_name)
        lines = [summary, ""]
        for name, annotation, default, docstring in fields:
            lines.append(f".. py:attribute:: {class_name}.{name}")
            lines.append(f"   :type: {annotation}")
            if default is not None:
                lines.append(f"   :value: {default}")
            lines.append("")
            lines.extend("   " + line if line else "" for line in docstring.splitlines())
            lines.append("")
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=str(SOURCE)), 0, container)
        return container.children


def setup(app):
    """Register the directive."""
    app.add_directive("lorem-hypers", HypersDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
