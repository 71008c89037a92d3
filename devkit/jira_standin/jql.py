"""A JQL parser and evaluator for the Jira stand-in: the clauses the sync uses, with Jira's semantics."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from include.jira_rules import ISSUE_NUMBER_PATTERN, PROJECT_KEY_PATTERN

__all__ = [
    "JqlContext",
    "JqlError",
    "JqlIssue",
    "Query",
    "compile_jql",
    "jira_local_to_instant",
    "parse_jql",
]


class JqlError(ValueError):
    """The JQL cannot be run; the message is the one the stand-in puts in `errorMessages`."""


class JqlIssue(Protocol):
    """What the evaluator reads from an issue."""

    id: int
    key: str
    project_key: str
    project_id: int
    project_name: str
    status: str
    status_id: str
    summary: str
    assignee_email: str | None
    assignee_account_id: str | None
    updated: datetime
    created: datetime


@dataclass(frozen=True)
class JqlContext:
    """Everything outside the query that changes its meaning: the account's zone, 'now', what exists."""

    time_zone: str
    now: datetime
    projects: Mapping[str, tuple[int, str]]  # upper-case key -> (id, name)
    statuses: Mapping[str, str]  # lower-case name -> id
    # Issue keys as Jira resolves them in `key` clauses: current and former (moved) keys -> issue id.
    # Given, a key it lacks is an error, or with `warnings` set (validateQuery=false) a warning there.
    key_ids: Mapping[str, int] | None = None
    warnings: list[str] | None = dataclass_field(default=None, compare=False)


# ---------------------------------------------------------------------------------------------- tokens

_OPERATOR_CHARS = "=!<>~"
_SYMBOLS = {"&&": "and", "&": "and", "||": "or", "|": "or"}
# A bare word ends at whitespace or at any character JQL gives a meaning of its own.
_WORD_END = set(" \t\r\n()\",'=!<>~&|")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True)
class _Token:
    kind: str  # word, string, lparen, rparen, comma, op, and, or, not, eof
    text: str
    pos: int  # 0-based offset into the query

    def shown(self) -> str:
        return "end of query" if self.kind == "eof" else self.text


def _syntax_error(message: str, pos: int) -> JqlError:
    return JqlError(f"Error in the JQL Query: {message} (line 1, character {pos + 1})")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Token("lparen" if char == "(" else "rparen", char, i))
            i += 1
        elif char == ",":
            tokens.append(_Token("comma", char, i))
            i += 1
        elif char in "\"'":
            start, i = i, i + 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise _syntax_error(
                        f"The quoted string '{text[start + 1 :]}' has not been completed.", start
                    )
                if text[i] == "\\":
                    if i + 1 >= n:
                        raise _syntax_error("A backslash must escape a character.", i)
                    chars.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                    i += 2
                elif text[i] == char:
                    i += 1
                    break
                else:
                    chars.append(text[i])
                    i += 1
            tokens.append(_Token("string", "".join(chars), start))
        elif text.startswith(("&&", "||"), i):
            tokens.append(_Token(_SYMBOLS[text[i : i + 2]], text[i : i + 2], i))
            i += 2
        elif char in "&|":
            tokens.append(_Token(_SYMBOLS[char], char, i))
            i += 1
        elif char in _OPERATOR_CHARS:
            two = text[i : i + 2]
            if two in ("!=", "!~", "<=", ">="):
                tokens.append(_Token("op", two, i))
                i += 2
            elif char == "!":
                tokens.append(_Token("not", char, i))
                i += 1
            else:
                tokens.append(_Token("op", char, i))
                i += 1
        else:
            start = i
            while i < n and text[i] not in _WORD_END and not text[i].isspace():
                i += 1
            word = text[start:i]
            lowered = word.lower()
            kind = lowered if lowered in ("and", "or", "not") else "word"
            tokens.append(_Token(kind, word, start))
    tokens.append(_Token("eof", "", n))
    return tokens


# ------------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Value:
    text: str
    quoted: bool
    pos: int


@dataclass(frozen=True)
class Clause:
    field: str
    operator: str  # =, !=, <, <=, >, >=, ~, !~, in, not in, is, is not
    values: tuple[Value, ...]
    pos: int


@dataclass(frozen=True)
class BoolNode:
    operator: str  # and, or
    children: tuple[Node, ...]


@dataclass(frozen=True)
class NotNode:
    child: Node


Node = Clause | BoolNode | NotNode


@dataclass(frozen=True)
class Query:
    where: Node | None
    order_by: tuple[tuple[str, str | None, int], ...]  # (field, "asc" | "desc" | None, position)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_word(self, *words: str) -> bool:
        return self.token.kind == "word" and self.token.text.lower() in words

    def peek_word(self, offset: int, *words: str) -> bool:
        token = self.tokens[min(self.index + offset, len(self.tokens) - 1)]
        return token.kind == "word" and token.text.lower() in words

    def parse(self) -> Query:
        where = None
        if self.token.kind != "eof" and not (self.at_word("order") and self.peek_word(1, "by")):
            where = self.parse_or()
        order_by: list[tuple[str, str | None, int]] = []
        if self.at_word("order"):
            self.advance()
            if not self.at_word("by"):
                raise _syntax_error(f"Expecting 'by' but got '{self.token.shown()}'.", self.token.pos)
            self.advance()
            while True:
                if self.token.kind not in ("word", "string"):
                    raise _syntax_error(
                        f"Expecting a field name but got '{self.token.shown()}'.", self.token.pos
                    )
                field = self.advance()
                direction = None
                if self.at_word("asc", "desc"):
                    direction = self.advance().text.lower()
                order_by.append((field.text, direction, field.pos))
                if self.token.kind != "comma":
                    break
                self.advance()
        if self.token.kind != "eof":
            expected = "Expecting either 'OR' or 'AND'" if not order_by else "Expecting ','"
            raise _syntax_error(f"{expected} but got '{self.token.shown()}'.", self.token.pos)
        return Query(where=where, order_by=tuple(order_by))

    def parse_or(self) -> Node:
        children = [self.parse_and()]
        while self.token.kind == "or":
            self.advance()
            children.append(self.parse_and())
        return children[0] if len(children) == 1 else BoolNode("or", tuple(children))

    def parse_and(self) -> Node:
        children = [self.parse_not()]
        while self.token.kind == "and":
            self.advance()
            children.append(self.parse_not())
        return children[0] if len(children) == 1 else BoolNode("and", tuple(children))

    def parse_not(self) -> Node:
        if self.token.kind == "not":
            self.advance()
            return NotNode(self.parse_not())
        if self.token.kind == "lparen":
            opened = self.advance()
            node = self.parse_or()
            if self.token.kind != "rparen":
                raise _syntax_error(
                    f"Expecting ')' to close the '(' at character {opened.pos + 1} "
                    f"but got '{self.token.shown()}'.",
                    self.token.pos,
                )
            self.advance()
            return node
        return self.parse_clause()

    def parse_clause(self) -> Clause:
        field = self.token
        if field.kind not in ("word", "string") or self.at_word("order"):
            raise _syntax_error(f"Expecting a field name but got '{field.shown()}'.", field.pos)
        self.advance()
        operator = self.parse_operator()
        if operator in ("in", "not in"):
            values = self.parse_list()
        elif operator in ("is", "is not"):
            if not self.at_word("empty", "null"):
                raise _syntax_error(
                    f"Expecting 'EMPTY' or 'NULL' but got '{self.token.shown()}'.", self.token.pos
                )
            values = (Value(self.advance().text.lower(), False, field.pos),)
        else:
            values = (self.parse_value(),)
        return Clause(field.text, operator, values, field.pos)

    def parse_operator(self) -> str:
        token = self.token
        if token.kind == "op":
            self.advance()
            return token.text
        if self.at_word("in"):
            self.advance()
            return "in"
        if token.kind == "not" and self.peek_word(1, "in"):
            self.index += 2
            return "not in"
        if self.at_word("is"):
            self.advance()
            if self.token.kind == "not":
                self.advance()
                return "is not"
            return "is"
        if self.at_word("was", "changed"):
            raise JqlError(f"The operator '{token.text.upper()}' is not supported by the Jira stand-in.")
        raise _syntax_error(f"Expecting operator but got '{token.shown()}'.", token.pos)

    def parse_list(self) -> tuple[Value, ...]:
        if self.token.kind != "lparen":
            raise _syntax_error(f"Expecting '(' but got '{self.token.shown()}'.", self.token.pos)
        self.advance()
        values = [self.parse_value()]
        while self.token.kind == "comma":
            self.advance()
            values.append(self.parse_value())
        if self.token.kind != "rparen":
            raise _syntax_error(f"Expecting ')' but got '{self.token.shown()}'.", self.token.pos)
        self.advance()
        return tuple(values)

    def parse_value(self) -> Value:
        token = self.token
        if token.kind == "string":
            self.advance()
            return Value(token.text, True, token.pos)
        if token.kind == "word":
            self.advance()
            if self.token.kind == "lparen":
                raise JqlError(f"Unable to find JQL function '{token.text}()'.")
            return Value(token.text, False, token.pos)
        raise _syntax_error(f"Expecting a value but got '{token.shown()}'.", token.pos)


def parse_jql(text: str) -> Query:
    """Parse JQL into a Query; raises JqlError for anything Jira would reject as malformed."""
    return _Parser(text).parse()


# -------------------------------------------------------------------------------------------- datetimes

_DATE_LITERAL = re.compile(r"^(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?:\s+(\d{1,2}):(\d{1,2}))?$")
_PERIOD = re.compile(r"^([+-]?)((?:\d+[wdhm]\s*)+)$")
_PERIOD_PART = re.compile(r"(\d+)([wdhm])")
_PERIOD_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
}
_DATE_FORMATS_HINT = (
    "Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', "
    "a period such as '-5d' or '4w 2d', or epoch milliseconds."
)


def jira_local_to_instant(wall: datetime, time_zone: str) -> datetime:
    """The instant Jira (Java's ZonedDateTime.ofLocal with no preferred offset) gives a zone-less wall time.

    Java moves a wall time inside a DST gap forward by the gap's length and gives one inside a fold the
    earlier offset. PEP 495 with fold=0 yields the same instants: in a gap it applies the offset from
    before the transition (which equals shifting forward), in a fold the first, earlier, offset.
    """
    return wall.replace(tzinfo=ZoneInfo(time_zone), fold=0).astimezone(UTC)


def _date_value(value: Value, field: str, context: JqlContext) -> datetime:
    text = value.text.strip()
    if not value.quoted and re.fullmatch(r"-?\d+", text):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(text))
    match = _DATE_LITERAL.match(text)
    if match:
        year, _, month, day, hour, minute = match.groups()
        try:
            wall = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0))
        except ValueError:
            raise JqlError(
                f"Date value '{value.text}' for field '{field}' is invalid. {_DATE_FORMATS_HINT}"
            ) from None
        return jira_local_to_instant(wall, context.time_zone)
    period = _PERIOD.match(text)
    if period:
        sign, body = period.groups()
        delta = sum(
            (int(count) * _PERIOD_UNITS[unit] for count, unit in _PERIOD_PART.findall(body)), timedelta()
        )
        return context.now - delta if sign == "-" else context.now + delta
    raise JqlError(f"Date value '{value.text}' for field '{field}' is invalid. {_DATE_FORMATS_HINT}")


# ------------------------------------------------------------------------------------------ evaluation

Predicate = Callable[[JqlIssue], bool]

_FIELD_ALIASES = {
    "project": "project",
    "key": "key",
    "issuekey": "key",
    "issue": "key",
    "id": "key",
    "status": "status",
    "updated": "updated",
    "updateddate": "updated",
    "created": "created",
    "createddate": "created",
    "summary": "summary",
    "assignee": "assignee",
}
_EQUALITY = {"=", "!=", "in", "not in"}
_RELATIONAL = {"=", "!=", "<", "<=", ">", ">=", "in", "not in"}
_ISSUE_KEY = re.compile(rf"^({PROJECT_KEY_PATTERN})-({ISSUE_NUMBER_PATTERN})$")


def _unsupported_operator(operator: str, field: str) -> JqlError:
    return JqlError(f"The operator '{operator}' is not supported by the '{field}' field.")


def _membership(operator: str, wanted: set, attribute: Callable[[JqlIssue], object]) -> Predicate:
    if operator in ("=", "in"):
        return lambda issue: attribute(issue) in wanted
    return lambda issue: attribute(issue) not in wanted


def _project_clause(clause: Clause, context: JqlContext) -> Predicate:
    if clause.operator not in _EQUALITY:
        raise _unsupported_operator(clause.operator, clause.field)
    by_id = {str(project_id): key for key, (project_id, _) in context.projects.items()}
    by_name = {name.lower(): key for key, (_, name) in context.projects.items()}
    wanted: set[str] = set()
    for value in clause.values:
        text = value.text.strip()
        if text.upper() in context.projects:
            key: str | None = text.upper()
        else:
            key = by_id.get(text) or by_name.get(text.lower())
        if key is None:
            raise JqlError(f"The value '{value.text}' does not exist for the field '{clause.field}'.")
        wanted.add(key)
    return _membership(clause.operator, wanted, lambda issue: issue.project_key)


def _status_clause(clause: Clause, context: JqlContext) -> Predicate:
    if clause.operator not in _EQUALITY:
        raise _unsupported_operator(clause.operator, clause.field)
    ids = set(context.statuses.values())
    wanted: set[str] = set()
    for value in clause.values:
        text = value.text.strip()
        status_id = context.statuses.get(text.lower()) or (text if text in ids else None)
        if status_id is None:
            raise JqlError(f"The value '{value.text}' does not exist for the field '{clause.field}'.")
        wanted.add(status_id)
    return _membership(clause.operator, wanted, lambda issue: issue.status_id)


def _key_clause(clause: Clause, context: JqlContext) -> Predicate:
    if clause.operator not in _EQUALITY:
        raise _unsupported_operator(clause.operator, clause.field)
    keys: set[str] = set()
    ids: set[int] = set()
    for value in clause.values:
        text = value.text.strip()
        if text.isdigit():
            ids.add(int(text))
        elif _ISSUE_KEY.match(text.upper()):
            if context.key_ids is None:
                keys.add(text.upper())
            elif text.upper() in context.key_ids:
                ids.add(context.key_ids[text.upper()])  # a former key finds the moved issue
            else:
                missing = f"An issue with key '{text.upper()}' does not exist for field '{clause.field}'."
                if context.warnings is None:
                    raise JqlError(missing)
                context.warnings.append(missing)
        else:
            raise JqlError(f"The issue key '{value.text}' for field '{clause.field}' is invalid.")
    if clause.operator in ("=", "in"):
        return lambda issue: issue.key in keys or issue.id in ids
    return lambda issue: issue.key not in keys and issue.id not in ids


def _summary_clause(clause: Clause) -> Predicate:
    if clause.operator not in ("~", "!~"):
        raise _unsupported_operator(clause.operator, clause.field)
    # Jira's text search matches words, not the whole value; every term must occur.
    terms = [term.strip("*?").lower() for term in clause.values[0].text.split()]
    terms = [term for term in terms if term]
    if not terms:
        raise JqlError(f"The field '{clause.field}' needs a search term.")

    def contains(issue: JqlIssue) -> bool:
        summary = issue.summary.lower()
        return all(term in summary for term in terms)

    return contains if clause.operator == "~" else (lambda issue: not contains(issue))


def _assignee_clause(clause: Clause) -> Predicate:
    if clause.operator in ("is", "is not"):
        empty = clause.operator == "is"
        return lambda issue: (issue.assignee_email is None) == empty
    if clause.operator not in _EQUALITY:
        raise _unsupported_operator(clause.operator, clause.field)
    wanted = {value.text.strip().lower() for value in clause.values}

    def matches(issue: JqlIssue) -> bool:
        identities = {(issue.assignee_email or "").lower(), (issue.assignee_account_id or "").lower()}
        return bool(identities & wanted)

    if clause.operator in ("=", "in"):
        return lambda issue: issue.assignee_email is not None and matches(issue)
    # As in Jira, != and NOT IN never match unassigned issues: EMPTY is not a value.
    return lambda issue: issue.assignee_email is not None and not matches(issue)


def _date_clause(clause: Clause, name: str, context: JqlContext) -> Predicate:
    def attribute(issue: JqlIssue) -> datetime:
        return issue.updated if name == "updated" else issue.created

    if clause.operator in ("is", "is not"):
        # Created and updated are set on every issue: EMPTY matches none of them.
        return (lambda _issue: False) if clause.operator == "is" else (lambda _issue: True)
    if clause.operator not in _RELATIONAL:
        raise _unsupported_operator(clause.operator, clause.field)
    instants = [_date_value(value, clause.field, context) for value in clause.values]
    if clause.operator in ("in", "not in"):
        wanted = set(instants)
        return _membership(clause.operator, wanted, attribute)
    bound = instants[0]
    compare: dict[str, Callable[[datetime], bool]] = {
        "=": lambda at: at == bound,
        "!=": lambda at: at != bound,
        "<": lambda at: at < bound,
        "<=": lambda at: at <= bound,
        ">": lambda at: at > bound,
        ">=": lambda at: at >= bound,
    }
    check = compare[clause.operator]
    return lambda issue: check(attribute(issue))


def _compile_node(node: Node, context: JqlContext) -> Predicate:
    if isinstance(node, NotNode):
        inner = _compile_node(node.child, context)
        return lambda issue: not inner(issue)
    if isinstance(node, BoolNode):
        parts = [_compile_node(child, context) for child in node.children]
        if node.operator == "and":
            return lambda issue: all(part(issue) for part in parts)
        return lambda issue: any(part(issue) for part in parts)
    name = _FIELD_ALIASES.get(node.field.strip().lower())
    if name is None:
        raise JqlError(f"Field '{node.field}' does not exist or you do not have permission to view it.")
    if name == "assignee":
        return _assignee_clause(node)
    if node.operator in ("is", "is not") and name not in ("updated", "created"):
        # Project, key, status and summary are never empty.
        return (lambda _issue: False) if node.operator == "is" else (lambda _issue: True)
    if name == "summary":
        return _summary_clause(node)
    if name == "project":
        return _project_clause(node, context)
    if name == "status":
        return _status_clause(node, context)
    if name == "key":
        return _key_clause(node, context)
    return _date_clause(node, name, context)


# Jira's default direction per field when ORDER BY names none: newest first for dates.
_SORT_FIELDS = {"updated": "desc", "created": "desc", "key": "asc"}
_MAX_SORT_FIELDS = 7


def _key_order(issue: JqlIssue) -> tuple[str, int]:
    # Keys sort by project, then numerically: ABC-2 before ABC-10.
    project, _, number = issue.key.rpartition("-")
    return project, int(number)


def _sort_value(name: str) -> Callable[[JqlIssue], object]:
    if name == "updated":
        return lambda issue: issue.updated
    if name == "created":
        return lambda issue: issue.created
    return _key_order


@dataclass(frozen=True)
class CompiledQuery:
    """A query ready to run: `select` filters and orders a collection of issues."""

    predicate: Predicate
    order: tuple[tuple[str, bool], ...]  # (field, descending)

    def select(self, issues: Iterable[JqlIssue]) -> list[JqlIssue]:
        matched = [issue for issue in issues if self.predicate(issue)]
        # The id tie-break keeps pages stable between requests; Python's sort is stable, so sorting by
        # the least significant key first yields the full multi-key order.
        matched.sort(key=lambda issue: issue.id)
        for name, descending in reversed(self.order or (("created", True),)):
            matched.sort(key=_sort_value(name), reverse=descending)
        return matched


def compile_jql(text: str, context: JqlContext) -> CompiledQuery:
    """Parse and check JQL against the site; raises JqlError with Jira-style messages when it cannot run.

    Fields: project, key (issuekey, id), status, summary (~, !~), assignee, updated and created
    (=, !=, <, <=, >, >=, IN, IS [NOT] EMPTY). ORDER BY: updated, created, key. JQL functions are not
    supported, and a query without a restriction is refused, as Jira refuses unbounded queries.
    """
    if not isinstance(text, str) or not text.strip():
        raise JqlError(
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
        )
    query = parse_jql(text)
    if query.where is None:
        raise JqlError(
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
        )
    predicate = _compile_node(query.where, context)
    if len(query.order_by) > _MAX_SORT_FIELDS:
        raise JqlError(f"The ORDER BY clause can contain at most {_MAX_SORT_FIELDS} fields.")
    order: list[tuple[str, bool]] = []
    for field, direction, _pos in query.order_by:
        name = _FIELD_ALIASES.get(field.strip().lower())
        if name not in _SORT_FIELDS:
            raise JqlError(f"Not able to sort using field '{field}'.")
        order.append((name, (direction or _SORT_FIELDS[name]) == "desc"))
    return CompiledQuery(predicate=predicate, order=tuple(order))


def issue_key_parts(key: str) -> tuple[str, int] | None:
    """(PROJECT, number) for a well-formed upper-case issue key, else None."""
    match = _ISSUE_KEY.match(key)
    return (match.group(1), int(match.group(2))) if match else None
