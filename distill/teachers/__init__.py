"""The autoregressive models behind the model seam (`distill.seam.Model`): `OFATeacher` (`ofa.py`, with OFA's own
decoding recipes in `ofa_decoding.py`) and `HFTeacher` (`hf.py`: any transformers image-text model, its prompts per
family in `families.py`, its location formats in `locations.py`). `distill.loader.load_model` opens them."""
