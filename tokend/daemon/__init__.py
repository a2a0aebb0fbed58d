"""The running daemon: its services, the supervisor of worker processes, the worker's
own process, the control socket and the checks made before serving."""
