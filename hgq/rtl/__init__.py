"""Hardware numbers without a vendor tool: exact logic from a trained model, Verilog, simulation, yosys.

:func:`synth` traces a calibrated H-layer model into combinational logic (da4ml distributed arithmetic: every
multiplication by a constant weight becomes shifts and adds), writes it as Verilog, simulates the Verilog with
Icarus Verilog against ``model.predict`` (bit for bit) and synthesizes it with yosys for a Xilinx family, writing
``synth.json`` with LUTs, flip-flops, carry chains, DSPs and logic depth. ``hgq synth MODEL.keras -o DIR`` is the
same from the command line. Needs the ``synth`` extra (``pip install "hgq-fpga[synth]"``) and the ``yosys`` and
``iverilog`` executables.

Examples
--------
>>> import hgq
>>> result = hgq.synth(model, 'synth_out/')      # doctest: +SKIP
>>> result['lut'], result['mismatches']          # doctest: +SKIP
"""

from hgq.rtl.flow import DEFAULT_N_CHECK, SYNTH_FILE, count_mismatches, probe_inputs, synth
from hgq.rtl.trace import SUPPORTED_LAYERS, TracedModel, TraceError, trace_model
from hgq.rtl.verilog import SimulationError, ToolNotFoundError
from hgq.rtl.yosys import SynthesisError

__all__ = ['synth', 'trace_model', 'probe_inputs', 'count_mismatches', 'TracedModel', 'TraceError']
__all__ += ['SimulationError', 'SynthesisError', 'ToolNotFoundError', 'SUPPORTED_LAYERS', 'SYNTH_FILE']
__all__ += ['DEFAULT_N_CHECK']
