"""``hgq sweep``: many trainings of one configuration on Ray, one merged Pareto front, parallel export.

A sweep varies a run configuration over a grid (``--grid seed=0,1,2 --grid model.layers.2.units=16,32``) and
runs every grid point as a Ray task: the training part of ``hgq run`` in ``DIR/trials/<trial>/`` (its own seed,
history and Pareto front). The fronts of all trials are merged by the rule of
:class:`hgq.callbacks.ParetoFront`; the models picked from the merged front are calibrated, converted and checked
against Keras as parallel Ray tasks too. Ray is an optional dependency (``pip install "hgq-fpga[ray]"``); this
package imports it only when a sweep runs.

A sweep directory::

    sweep.json            the configuration file, the base configuration and the grid
    trials.json           every trial: settings, status, front, failed attempts with their errors
    trials/<trial>/       one ``hgq run`` directory per trial (training only)
    logs/<trial>.log      the trial's progress output
    front.json            the merged front (a ParetoFront index, paths relative to DIR)
    pareto.png            the merged front over every epoch of every trial (pareto-lut.png with export.synth)
    models/<model>.keras  the calibrated models; models/<model>.json their results
    hls/<model>/, synth/<model>/, bits-<model>.png
    results.json, report.md

Examples
--------
::

    hgq sweep configs/digits_mlp.yaml --grid seed=0,1,2 --grid model.layers.1.units=16,32 --out sweeps/digits
    hgq sweep configs/jets_mlp.yaml --grid seed=0,1,2,3 --out /nfs/sweeps/jets --address auto --cpus-per-trial 4
"""

from hgq.sweep.engine import RAY_MISSING, sweep
from hgq.sweep.front import MergedFront, merge_fronts
from hgq.sweep.grid import GridAxis, Trial, grid_trials, parse_axis

__all__ = ['sweep', 'RAY_MISSING', 'GridAxis', 'Trial', 'parse_axis', 'grid_trials', 'MergedFront', 'merge_fronts']
