"""The NARVL student: Query-CTC loss and CTC decoding (model classes are added with `student.modeling_narvl`)."""
from student.decoding import collapse, ctc_greedy_decode, ctc_prefix_beam_search, ctc_sequence_log_prob
from student.loss import ctc_required_length, query_ctc_loss

__all__ = [
    "collapse",
    "ctc_greedy_decode",
    "ctc_prefix_beam_search",
    "ctc_required_length",
    "ctc_sequence_log_prob",
    "query_ctc_loss",
]
