"""Stage 5's score columns, shared by mini-SUPERB (`run.py`) and SUPERB proper (`s3prl_runner.py`)."""
METRICS = {"pr": "PR PER (%)", "asr": "ASR WER (%)", "asr_cer": "ASR CER (%)", "sf_f1": "SF F1 (%)",
           "sf_cer": "SF CER (%)", "ks": "KS acc (%)", "sid": "SID acc (%)"}
