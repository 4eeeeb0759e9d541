"""``shardfuzz fleet``: one campaign across many machines, on a Ray cluster.

The driver (``driver.run_fleet``) places N campaigns as Ray actors by their declared resources
(``campaign.FleetCampaign``), each with its own seed and warm pool of ranks. Each campaign sends every
new finding to the fleet's collector (``collector.Collector``, on the driver's machine) the moment it is
found, where it is deduplicated against the whole fleet's corpus and saved once; its report snapshots go
there too, for one live view and one merged report. The example database is a shared Redis where one is
given, else the driver's own (``held_database``). A campaign whose actor or node dies is restarted by Ray
with what is left of the budget; what it had sent is already saved.
"""

from shardfuzz.fleet.options import FleetOptions, add_fleet_options

__all__ = ["FleetOptions", "add_fleet_options"]
