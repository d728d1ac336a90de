"""A local Azure Functions host for Python v2-model apps (HTTP, timer and queue triggers).

Functions come from ``<module>.app.get_functions()`` (blueprints included), so a new function
needs no second registration. Command line::

    python -m devhost [--app-dir .] [--module function_app] [--port 7071] [--pid-file F]

prints the functions, then ``devhost ready http://127.0.0.1:7071/api``; SIGINT/SIGTERM stop it.
In tests::

    with LocalHost(app_dir, settings={"AzureWebJobsStorage": conn}) as host:
        requests.get(f"{host.base_url}/health")
        host.trigger_timer("nightly")      # run a timer function once, synchronously
        host.drain_queues(timeout=10)      # wait until every trigger queue is empty

Settings: ``local.settings.json`` ``Values`` < environment < ``settings=``; all are applied to
``os.environ`` before the app is imported. host.json: ``extensions.http.routePrefix`` and
``extensions.queues`` (batchSize, newBatchThreshold, maxPollingInterval, visibilityTimeout,
maxDequeueCount, messageEncoding). ``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT`` (bytes, default 100 MB).

Keys: set ``LOCAL_FUNCTIONS_KEY`` to require it (``x-functions-key`` header or ``?code=``) for
``function``/``admin`` auth levels and ``POST /admin/functions/{name}``. Unset, keys are not
enforced, as with Core Tools locally.

Not emulated: bindings other than HTTP/timer/queue triggers and queue outputs, function
timeouts, queue lease renewal, timer schedule monitoring (past runs are not persisted),
``WEBSITE_TIME_ZONE`` (schedules are UTC), identity-based connections, CORS, master/system keys.
"""

from devhost.host import LocalHost

__all__ = ["LocalHost"]
