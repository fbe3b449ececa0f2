"""Test collector: emits ``count`` raw events (``system``, type COUNT) as fast as acknowledgements allow."""

from bus.plugin import Collector, run


class Counter(Collector):
    async def run(self):
        n = int(self.options.get("count", 0))
        system = self.options.get("system", "test")
        for i in range(n):
            await self.emit(self.event(system, "COUNT", f"event {i}", extensions={"n": i}))
        await self._publisher.flush() if self._publisher else None
        self.log.info("counter_done", count=n)
        import asyncio
        await asyncio.Event().wait()


if __name__ == "__main__":
    run(Counter)
