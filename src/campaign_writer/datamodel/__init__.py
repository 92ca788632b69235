"""The instance's datamodel, as the writer uses it.

- ``check``: routes held against the schemas Campaign describes (``validate --remote``,
  ``campaign.check_schemas``); pure, given what ``campaign.schemas`` read;
- ``scaffold``: a route for the config, written from a schema;
- ``presets``: ready-made routes for the staged built-ins (recipients, subscriptions).
"""
