"""The rewriting of the tests' ``assert`` statements, done in the parent before a run.

Every ``assert`` of trusted test code (the setup and the tests, never the program) is rewritten so that
each value it compares or tests for truth goes through ``_sapo_plain_`` (the harness's
:func:`~sapo.sandbox.harness._h_plain`): a value whose comparison or truth the program could redefine (an
object whose ``__eq__`` always returns ``True``) fails the test instead of passing it. The rewritten source
is what the harness compiles, so the harness need not import :mod:`ast`.
"""

from __future__ import annotations

import ast


def _plain_call(node: ast.expr) -> ast.expr:
    """``_sapo_plain_(node)`` at the node's place in the source."""
    call = ast.Call(func=ast.Name(id="_sapo_plain_", ctx=ast.Load()), args=[node], keywords=[])
    return ast.copy_location(call, node)


class _PlainChecks(ast.NodeTransformer):
    """Inside an ``assert``: every compared operand and every value tested for truth must be plain."""

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        node.left = _plain_call(node.left)
        node.comparators = [_plain_call(c) for c in node.comparators]
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        node.values = [_plain_call(v) for v in node.values]
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = _plain_call(node.operand)
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        node.test = _plain_call(node.test)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.ifs = [_plain_call(condition) for condition in node.ifs]
        return node


class _AssertRewriter(ast.NodeTransformer):
    """Rewrites every ``assert`` of trusted test code (at any depth) with :class:`_PlainChecks`."""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        node.test = _plain_call(_PlainChecks().visit(node.test))
        return node


def _prepare_test(source: str, name: str) -> tuple[str, list[str]]:
    """Trusted test code with its asserts rewritten (as source, for the harness to compile), and the names it
    uses. Done in the parent so the harness need not import :mod:`ast`; raises ``SyntaxError``."""
    tree = ast.parse(source, name)
    names = sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})
    tree = ast.fix_missing_locations(_AssertRewriter().visit(tree))
    rewritten = ast.unparse(tree)
    compile(rewritten, name, "exec", dont_inherit=True)
    return rewritten, names
