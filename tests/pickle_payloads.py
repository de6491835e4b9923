"""Hand-written pickles that run a shell command through each opcode that can call a global, for
the tests of our restricted unpicklers (DALL-E's pickles, the authors' args.pickle)."""

from __future__ import annotations


def _string(text: str) -> bytes:  # SHORT_BINUNICODE
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def payloads(command: str) -> dict[str, bytes]:
    """opcode form -> a pickle that calls os.system(command) when loaded by plain pickle."""
    quoted = command.encode()
    return {
        # GLOBAL + REDUCE: what `__reduce__` returning (os.system, (cmd,)) gives at protocol 2.
        "GLOBAL+REDUCE": b"\x80\x02cos\nsystem\n" + _string(command) + b"\x85R.",
        # STACK_GLOBAL (protocol 4): module and name come from the stack, not the opcode's text.
        "STACK_GLOBAL+REDUCE": b"\x80\x04" + _string("os") + _string("system") + b"\x93" + _string(command) + b"\x85R.",
        # INST and OBJ (protocol 0/1) instantiate "classes" by calling them with the marked args.
        "INST": b"(S'" + quoted + b"'\nios\nsystem\n.",
        "OBJ": b"(cos\nsystem\nS'" + quoted + b"'\no.",
        # A getattr chain: builtins.getattr(os module, 'system')(cmd), via __import__.
        "getattr chain": (b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\n" + _string("os") + b"\x85R"
                          + _string("system") + b"\x86R" + _string(command) + b"\x85R."),
        # builtins.eval of a Python expression.
        "builtins.eval": b"\x80\x02cbuiltins\neval\n" + _string(f"__import__('os').system({command!r})") + b"\x85R.",
    }

