"""Downstream evaluation: task readers, encoders of examples into features, task heads,
metrics, the bundled offline tasks and the fine-tuning loop (``clozelab finetune`` /
``clozelab evaluate``)."""
