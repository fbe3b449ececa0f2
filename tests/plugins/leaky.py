"""Test collector that does what a careless plugin does: logs its whole table, prints its password raw to
stderr and logs an exception that carries it (the secret scrubbers of the SDK and of busd must hide it)."""

import sys

from bus.plugin import Collector, run


class Leaky(Collector):
    async def run(self):
        password = self.options["password"]
        self.log.info("leaky_config", table=self.config)
        print(f"raw stderr line: connecting with password {password}", file=sys.stderr, flush=True)
        try:
            raise RuntimeError(f"login refused for password {password}")
        except RuntimeError:
            self.log.exception("leaky_failed")
        self.log.info("leaky_done")
        import asyncio
        await asyncio.Event().wait()


if __name__ == "__main__":
    run(Leaky)
