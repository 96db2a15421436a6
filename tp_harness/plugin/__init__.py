"""The plugin contract (``hookspecs``) and the pluggy manager that fills the registries (``manager``)."""
