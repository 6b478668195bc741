"""Benchmarks (tools, not needed by the server): ``engines`` (TTFA, RTF and intelligibility per
engine), ``capacity`` (many streams at once, in process and over WebSocket), ``streams`` (the
simulated LLM-fed, real-time listener), ``ws`` (a real server and real WebSocket clients), ``gpu``
(the cuda engine at many streams) and ``gpu_inputs`` (what the GPU check carries along)."""
