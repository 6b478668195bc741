"""The engine core: request state, the scheduler (policy, no tensors) and the runner (batched
backend calls), shared by the library API (:mod:`streamtts.speaker`) and the server.

    request -> Scheduler.schedule() -> Plan -> Runner.execute(plan) -> RunnerOutput
            -> Scheduler.update(plan, output) -> outputs routed to each request's sink
"""
