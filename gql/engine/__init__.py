"""The execution engine: documents parsed and validated once, query limits, the executor and
its compiled plans, and the library internals they rely on (in one adapter)."""
