"""The record formats of user JSONL files — TRL's standard and conversational ones — and their validation.

A record's kind comes from its keys (extra keys are kept in ``meta``); each kind has a standard form
(strings) and a conversational form (lists of ``{"role", "content"}`` messages, TRL's dataset formats):

============  ============================  ==========================  ===============================
kind          keys                          standard                    conversational
============  ============================  ==========================  ===============================
explicit      prompt, chosen, rejected      three strings               prompt: messages; chosen and
                                                                        rejected: [one assistant message]
implicit      chosen, rejected              Anthropic-HH dialogues,     two whole conversations: their
                                            split at the last           shared leading messages are the
                                            ``"\\n\\nAssistant:"``      prompt, the last one the reply
completion    prompt, completion            two strings                 prompt: messages; completion:
                                                                        [one assistant message]
sft           prompt, response              as ``completion``           as ``completion``
messages      messages                      —                           one conversation: prompt = all
                                                                        but the last (assistant) message
prompt        prompt                        a string                    messages, not ending with the
                                                                        assistant
============  ============================  ==========================  ===============================

As in TRL's ``maybe_extract_prompt``, an explicit record whose prompt is a string but whose chosen and
rejected are whole conversations is read as implicit (the string prompt is ignored). Any other mix of
strings and message lists is an error.

Records normalise to ``prompt: str | list[dict]`` (the messages) and ``chosen`` / ``rejected`` /
``response``: ``str`` (the assistant's content). Every problem raises :class:`DataFormatError` naming
the file, the line and the field (``prompt[1].role`` for a message's key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

RecordKind = Literal["explicit", "implicit", "completion", "sft", "messages", "prompt"]
FIELDS: dict[str, tuple[str, ...]] = {
    "explicit": ("prompt", "chosen", "rejected"),
    "implicit": ("chosen", "rejected"),
    "completion": ("prompt", "completion"),
    "sft": ("prompt", "response"),
    "messages": ("messages",),
    "prompt": ("prompt",),
}
ROLES = ("system", "developer", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"
# the config keys a user sets to change what these errors are about (tests compose them)
LINE_HINT = "Fix or remove this line (or set task.datamodule.on_error=skip to skip bad lines)."
ROW_HINT = "Fix or remove this row (or set task.datamodule.on_error=skip to skip bad rows)."
FILE_HINT = "Check the file the config points at (data.path or data.val_path with data=jsonl)."
FORMATS = (
    "{prompt, chosen, rejected}, {chosen, rejected} (implicit prompt), {prompt, completion}, "
    "{prompt, response}, {messages} or {prompt}"
)


class DataFormatError(ValueError):
    """A user data file (or dataset) that cannot be read, with the place and the fix in its message.

    Attributes:
        path: The file, dataset folder or Hub id.
        line: 1-based line number of a JSONL file, or a dataset row's 0-based index (with ``split``), or
            None for problems with the whole file.
        split: The dataset split a row index is in; None for JSONL lines.
        field: The offending JSON field (``chosen`` or ``prompt[1].content``), or None.
        problem: What is wrong, without the location (e.g. "expected a non-empty string, got int").
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        split: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.split = split
        self.field = field
        self.problem = problem
        where = f"{path}:{line}" if line is not None else f"{path}"
        if split is not None and line is not None:  # a dataset row: named by split and index
            where = f"{path}: split '{split}', row {line}"
        what = f"field '{field}': {problem}" if field is not None else problem
        if hint is None:
            hint = (ROW_HINT if split is not None else LINE_HINT) if line is not None else FILE_HINT
        super().__init__(f"{where}: {what}. {hint}".rstrip())


def json_type(value: Any) -> str:
    """The JSON name of a value's type ("str", "list", "object", "null", ...)."""
    names = {type(None): "null", bool: "bool", int: "int", float: "float", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def guess_kind(record: dict) -> RecordKind | None:
    """The record kind its keys suggest (extra keys ignored), or None.

    Any of "chosen"/"rejected" makes a preference record (explicit if "prompt" is there, else implicit);
    otherwise "messages", "completion", "response" and a lone "prompt", in that order.
    """
    if "chosen" in record or "rejected" in record:
        return "explicit" if "prompt" in record else "implicit"
    for key, kind in (("messages", "messages"), ("completion", "completion"), ("response", "sft")):
        if key in record:
            return kind  # type: ignore[return-value]
    return "prompt" if "prompt" in record else None


def split_hh(dialogue: str) -> tuple[str, str] | None:
    """Split an HH dialogue at its last ``"\\n\\nAssistant:"`` into (prompt incl. the tag, response)."""
    i = dialogue.rfind(HH_ASSISTANT)
    if i < 0:
        return None
    cut = i + len(HH_ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


# ------------------------------------------------------------------------------------------ values


class _Check:
    """Validators bound to one record's place, so every error names file, line (or split and row) and
    field."""

    def __init__(self, path: Path, line: int, split: str | None = None) -> None:
        self.path, self.line, self.split = path, line, split

    def error(self, field: str | None, problem: str) -> DataFormatError:
        return DataFormatError(self.path, problem, line=self.line, field=field, split=self.split)

    def string(self, value: Any, key: str, why: str = "") -> str:
        if not isinstance(value, str):
            why = why if isinstance(value, list) else ""  # the reason matters for a mix of formats
            raise self.error(key, f"expected a non-empty string{why}, got {json_type(value)}")
        if not value.strip():
            raise self.error(key, "expected a non-empty string, got an empty string")
        return value

    def messages(self, value: Any, key: str, why: str = "") -> list[dict[str, Any]]:
        """A non-empty list of ``{"role", "content"}`` messages with known roles and string contents."""
        if not isinstance(value, list):
            why = why if isinstance(value, str) else ""
            raise self.error(key, f"expected a list of messages{why}, got {json_type(value)}")
        if not value:
            raise self.error(key, "expected a non-empty list of messages, got an empty list")
        out = []
        for i, message in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(message, dict):
                raise self.error(where, f'expected a message {{"role", "content"}}, got {json_type(message)}')
            for k in ("role", "content"):
                if k not in message:
                    raise self.error(f"{where}.{k}", "missing")
            role, content = message["role"], message["content"]
            if not isinstance(role, str):
                raise self.error(f"{where}.role", f"expected a string, got {json_type(role)}")
            if role not in ROLES:
                known = ", ".join(ROLES)
                raise self.error(f"{where}.role", f"unknown role {role!r}: expected one of {known}")
            if not isinstance(content, str):
                blocks = " (multimodal content blocks are not supported)" if isinstance(content, list) else ""
                raise self.error(f"{where}.content", f"expected a string, got {json_type(content)}{blocks}")
            out.append(dict(message))
        return out

    def prompt_messages(self, messages: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        """Messages that can be prompted with: the last one is not the assistant's."""
        if messages[-1]["role"] == "assistant":
            raise self.error(
                f"{key}[{len(messages) - 1}].role",
                "a prompt must not end with an assistant message (the reply is generated after it); "
                "end it with the user's turn",
            )
        return messages

    def reply(self, value: Any, key: str, why: str = "") -> str:
        """The content of a list holding exactly one assistant message."""
        messages = self.messages(value, key, why)
        if messages[0]["role"] != "assistant":
            raise self.error(
                f"{key}[0].role",
                f"expected 'assistant' (the reply), got {messages[0]['role']!r}; a whole conversation "
                "belongs in the implicit format {chosen, rejected} or {messages}",
            )
        if len(messages) != 1:
            raise self.error(key, f"expected one assistant message (the reply), got {len(messages)} messages")
        return self.content(messages[0], f"{key}[0].content")

    def content(self, message: dict[str, Any], key: str) -> str:
        if not message["content"].strip():
            raise self.error(key, "expected a non-empty reply, got an empty string")
        return message["content"]


def _prompt(c: _Check, value: Any, key: str = "prompt") -> str | list[dict[str, Any]]:
    if isinstance(value, list):
        return c.prompt_messages(c.messages(value, key), key)
    if isinstance(value, str):
        return c.string(value, key)
    raise c.error(key, f"expected a non-empty string or a list of messages, got {json_type(value)}")


def _prompt_and_reply(c: _Check, record: dict, reply_key: str) -> tuple[str | list[dict[str, Any]], str]:
    """A prompt and a reply of the same format: string + string, or messages + [assistant message]."""
    prompt = _prompt(c, record["prompt"])
    if isinstance(prompt, list):
        return prompt, c.reply(record[reply_key], reply_key, " (the assistant's reply), as 'prompt' is one")
    return prompt, c.string(record[reply_key], reply_key, " (as 'prompt' is a string)")


def _implicit_conversations(c: _Check, chosen: Any, rejected: Any) -> dict[str, Any]:
    """Two whole conversations that differ only in their last (assistant) message."""
    convs = {}
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        msgs = c.messages(value, key, " like 'chosen'" if key == "rejected" else "")
        last = len(msgs) - 1
        if msgs[-1]["role"] != "assistant":
            raise c.error(
                f"{key}[{last}].role",
                f"the last message must be the assistant's reply, got {msgs[-1]['role']!r}",
            )
        if last == 0:
            raise c.error(key, "the conversation has no prompt: only the assistant's reply")
        c.content(msgs[-1], f"{key}[{last}].content")
        convs[key] = msgs
    prompt = convs["chosen"][:-1]
    if convs["rejected"][:-1] != prompt:
        raise c.error(
            "rejected",
            "the conversation before the last assistant message differs from the one in 'chosen' "
            "(both must share the same prompt)",
        )
    c.prompt_messages(prompt, "chosen")
    return {
        "prompt": prompt,
        "chosen": convs["chosen"][-1]["content"],
        "rejected": convs["rejected"][-1]["content"],
    }


def _implicit(c: _Check, record: dict) -> dict[str, Any]:
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list):
        return _implicit_conversations(c, chosen, rejected)
    parts = {}
    for key in ("chosen", "rejected"):
        split = split_hh(c.string(record[key], key))
        if split is None:
            raise c.error(key, "HH dialogue has no '\\n\\nAssistant:' turn to split the response at")
        if not split[1].strip():
            raise c.error(key, "HH dialogue has an empty last Assistant turn")
        parts[key] = split
    if parts["chosen"][0] != parts["rejected"][0]:
        raise c.error(
            "rejected",
            "the dialogue before the last Assistant turn differs from the one in 'chosen' "
            "(both must share the same prompt)",
        )
    return {"prompt": parts["chosen"][0], "chosen": parts["chosen"][1], "rejected": parts["rejected"][1]}


def _explicit(c: _Check, record: dict) -> dict[str, Any]:
    prompt = _prompt(c, record["prompt"])
    if isinstance(prompt, str):
        if isinstance(record["chosen"], list) and isinstance(record["rejected"], list):
            return _implicit_conversations(c, record["chosen"], record["rejected"])  # TRL's extract_prompt
        why = " (as 'prompt' is a string)"
        return {"prompt": prompt, **{k: c.string(record[k], k, why) for k in ("chosen", "rejected")}}
    why = " (the assistant's reply), as 'prompt' is one"
    return {"prompt": prompt, **{k: c.reply(record[k], k, why) for k in ("chosen", "rejected")}}


def _completion(c: _Check, record: dict) -> dict[str, Any]:
    label = record.get("label")
    if isinstance(label, bool):
        raise c.error(
            "label", "unpaired preference records {prompt, completion, label} are not supported: give pairs"
        )
    prompt, response = _prompt_and_reply(c, record, "completion")
    return {"prompt": prompt, "response": response}


def _sft(c: _Check, record: dict) -> dict[str, Any]:
    prompt, response = _prompt_and_reply(c, record, "response")
    return {"prompt": prompt, "response": response}


def _messages(c: _Check, record: dict) -> dict[str, Any]:
    msgs = c.messages(record["messages"], "messages")
    last = len(msgs) - 1
    if msgs[-1]["role"] != "assistant":
        raise c.error(
            f"messages[{last}].role",
            f"the last message must be the assistant's reply (the demonstration), got {msgs[-1]['role']!r}",
        )
    if last == 0:
        raise c.error("messages", "the conversation has no prompt: only the assistant's reply")
    return {
        "prompt": c.prompt_messages(msgs[:-1], "messages"),
        "response": c.content(msgs[-1], f"messages[{last}].content"),
    }


def _prompt_only(c: _Check, record: dict) -> dict[str, Any]:
    return {"prompt": _prompt(c, record["prompt"])}


_PARSERS = {
    "explicit": _explicit,
    "implicit": _implicit,
    "completion": _completion,
    "sft": _sft,
    "messages": _messages,
    "prompt": _prompt_only,
}


def parse_record(
    path: str | Path, line: int, record: dict, kind: RecordKind, split: str | None = None
) -> dict[str, Any]:
    """Validate one record as ``kind`` and return its normalised fields plus ``meta``.

    ``line`` is the record's line in a JSONL file, or with ``split`` its row index in that dataset split.

    Returns:
        A dict with "prompt" (str or messages), per kind "chosen"/"rejected" or "response" (str), and
        "meta" (the other keys, unchanged).

    Raises:
        DataFormatError: A missing field, a wrong type, an empty string or list, a bad message (no role,
            unknown role, non-string content), a string where messages belong or the reverse, chosen ==
            rejected, a prompt ending with the assistant, a conversation not ending with the assistant's
            reply, or an implicit pair whose prompts differ.
    """
    c = _Check(Path(path), line, split)
    for key in FIELDS[kind]:
        if key not in record:
            raise c.error(key, "missing")
    values = _PARSERS[kind](c, record)
    if "chosen" in values and values["chosen"] == values["rejected"]:
        raise c.error("rejected", "identical to 'chosen' (no preference to learn)")
    values["meta"] = {k: v for k, v in record.items() if k not in FIELDS[kind]}
    return values
