"""gunicorn settings for the test service: drain the exporter when a worker exits."""


def worker_exit(server, worker):
    from wsgi_app import exporter

    exporter.close()
