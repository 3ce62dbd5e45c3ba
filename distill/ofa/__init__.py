"""OFA (One For All) teacher model, faithful to OFA-Sys's transformers port, under current transformers.

Importing this package registers OFA with the Auto classes: `AutoConfig`, `AutoModel`, `AutoModelForSeq2SeqLM`,
`AutoImageProcessor` and `AutoProcessor` load an OFA folder without `trust_remote_code`.
"""
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoProcessor,
)

from .configuration_ofa import OFAConfig
from .decoder import OFADecoder, OFADecoderOutput
from .encoder import OFAEncoder, OFAEncoderOutput
from .image_processing_ofa import OFAImageProcessor
from .modeling_ofa import OFAModel, OFAPreTrainedModel
from .processing_ofa import OFAProcessor

AutoConfig.register("ofa", OFAConfig, exist_ok=True)
AutoModel.register(OFAConfig, OFAModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(OFAConfig, OFAModel, exist_ok=True)
AutoImageProcessor.register(OFAConfig, slow_image_processor_class=OFAImageProcessor, exist_ok=True)
AutoProcessor.register(OFAConfig, OFAProcessor, exist_ok=True)

__all__ = ["OFAConfig", "OFAModel", "OFAPreTrainedModel", "OFAEncoder", "OFAEncoderOutput", "OFADecoder",
           "OFADecoderOutput", "OFAImageProcessor", "OFAProcessor"]
