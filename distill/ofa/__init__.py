"""OFA (One For All) teacher model, faithful to OFA-Sys's transformers port, under current transformers."""
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_ofa import OFAConfig
from .decoder import OFADecoder, OFADecoderOutput
from .encoder import OFAEncoder, OFAEncoderOutput
from .modeling_ofa import OFAModel, OFAPreTrainedModel

AutoConfig.register("ofa", OFAConfig, exist_ok=True)
AutoModel.register(OFAConfig, OFAModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(OFAConfig, OFAModel, exist_ok=True)

__all__ = ["OFAConfig", "OFAModel", "OFAPreTrainedModel", "OFAEncoder", "OFAEncoderOutput", "OFADecoder",
           "OFADecoderOutput"]
