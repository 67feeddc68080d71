"""supervisord program templates, packaged as ``halton_meter.supervisor_templates``."""
