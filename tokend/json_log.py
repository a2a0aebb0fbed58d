"""``twistd --logger tokend.json_log.observer`` keeps working: see :mod:`tokend.logs.json_lines`."""

from tokend.logs.json_lines import observer as observer
