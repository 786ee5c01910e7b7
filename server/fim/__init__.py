"""Fill-in-the-middle in one place: the families' templates (templates.py), a hole written as the served model's
prompt (prompt.py), trimmed to fit its context (fit.py), each endpoint's defaults (defaults.py), and the answer
cleaned for the editor (clean.py). Pure string work: the generation core brings the tokenizer.

It sits in the bottom layer, beside the settings, because the planner reads the templates too (to recognise a
model directory's FIM format from its special tokens).
"""
