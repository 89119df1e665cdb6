"""Fine-tuning the four Sapiens tasks: one ``Task`` each (``pose``, ``seg``, ``depth``,
``normal``; base classes in ``task``, lookup in ``registry``), built on shared heads, losses,
metrics, transforms, labelled shards and the task model (``model``)."""
