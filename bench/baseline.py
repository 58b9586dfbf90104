"""The ceiling: bare Temporal workflows of the same shape as a lead's first step
(start, one activity, wait for one signal, one activity, complete), with a worker in
its own process. `python -m bench.baseline --worker ADDRESS QUEUE` runs that worker."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker


@activity.defn
def touch(value: str) -> str:
    return value


@workflow.defn
class BareLead:
    def __init__(self) -> None:
        self.signalled = False

    @workflow.run
    async def run(self, name: str) -> str:
        await workflow.execute_activity(touch, name, start_to_close_timeout=timedelta(seconds=30))
        await workflow.wait_condition(lambda: self.signalled)
        return await workflow.execute_activity(touch, name, start_to_close_timeout=timedelta(seconds=30))

    @workflow.signal
    def engage(self) -> None:
        self.signalled = True


async def run_baseline(client: Client, queue: str, count: int, concurrency: int = 100) -> float:
    """Workflows per second, first start to last completion."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            handle = await client.start_workflow(BareLead.run, f"b{index}", id=f"bare-{queue}-{index}", task_queue=queue)
            await handle.signal(BareLead.engage)
            await handle.result()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def _worker(address: str, queue: str) -> None:
    import concurrent.futures

    client = await Client.connect(address)
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        await Worker(client, task_queue=queue, workflows=[BareLead], activities=[touch],
                     activity_executor=pool).run()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    asyncio.run(_worker(sys.argv[2], sys.argv[3]))
