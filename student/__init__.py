"""The NARVL student: model, Query-CTC loss and CTC decoding."""
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from distill.loader import register_model_type
from distill.ofa import OFAImageProcessor, OFAProcessor

from student.configuration_narvl import NARVLConfig
from student.decoding import collapse, ctc_decode, ctc_greedy_decode, ctc_prefix_beam_search, ctc_sequence_log_prob
from student.loss import ctc_required_length, query_ctc_loss
from student.modeling_narvl import NARVLModel, NARVLOutput
from student.runner import NARVLStudent

# A saved student folder then opens with AutoConfig / AutoModel / AutoProcessor too (it holds OFA's processor).
AutoConfig.register("narvl", NARVLConfig, exist_ok=True)
AutoModel.register(NARVLConfig, NARVLModel, exist_ok=True)
AutoImageProcessor.register(NARVLConfig, slow_image_processor_class=OFAImageProcessor, exist_ok=True)
AutoProcessor.register(NARVLConfig, OFAProcessor, exist_ok=True)
# ... and `distill.loader.load_model` opens it (or its ONNX export) behind the model seam.
register_model_type("narvl", NARVLStudent.from_pretrained)

__all__ = [
    "NARVLConfig",
    "NARVLModel",
    "NARVLOutput",
    "NARVLStudent",
    "collapse",
    "ctc_decode",
    "ctc_greedy_decode",
    "ctc_prefix_beam_search",
    "ctc_required_length",
    "ctc_sequence_log_prob",
    "query_ctc_loss",
]
