"""The HTTP service over the steps: the app, the job queue and storage, the worker and its runner processes,
uploads, MQTT, metrics. Nothing below this layer imports it."""
