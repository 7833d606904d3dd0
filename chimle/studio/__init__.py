"""CHIMLE Studio: the logic behind `app.py`, kept out of the UI file so tests can call it.

Modules:
    security: where the app may run training, path confinement, safe zip extraction.
    models: the model registry (checkpoints and finished runs) and the shared model cache.
    session: one user's state (input, samples, current code, edits) and its operations.
    paint: what the user painted on the result (the image editor's strokes) as mask and colours.
    batches: several photos or a zip in, a zip of full-size results out.
    training: launching (from scratch or from a model), listing, re-attaching to and stopping
        training processes, and what the Train tab says of them.
    handlers: Gradio-facing functions (widget values in, widget values out).
    memory: hands memory that renders freed back to the operating system.
"""
