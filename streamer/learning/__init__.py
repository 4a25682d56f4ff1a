"""Learning: the model, its adapters, losses, the learner's step, replay, teachers, strategies.

`model` and `peft` are the only modules importing `open_clip`; `losses` is pure tensor maths;
`learner` turns a batch into a `StepResult` and knows nothing of Kafka, metrics or files.

May import: `streamer.records`, `streamer.config`, `streamer.logs`. Nothing from intake,
evaluation, state or service.
"""
