"""Test parser: refuses ``bad...`` messages with BadInput, crashes on ``crash``, tags the rest."""

from bus.exceptions import BadInput
from bus.plugin import Parser, run


class Picky(Parser):
    def handle(self, event):
        msg = event["msg"]
        if msg.startswith("bad"):
            raise BadInput(msg.split()[0], f"refused {msg!r}")
        if msg == "crash":
            return {}["no such key"]
        return self.event(event["system"], "PICKY_OK", msg)


if __name__ == "__main__":
    run(Picky)
