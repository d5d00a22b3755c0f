"""The playbook language: models, the YAML loader with file:line errors, example playbooks and templates.

Pure: no network, no Temporal. ``library/`` holds the example playbooks, ``templates/`` the Jinja2 messages
and the review document.
"""
