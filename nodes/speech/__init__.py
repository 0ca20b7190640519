"""Speech: 16 kHz PCM and resampling, WAV files, espeak-ng synthesis, phoneme recognition and alignment."""
from .espeak import ESPEAK_MAPPING, Espeak, arpabet_table, espeak_g2p, events_to_phones, speak
from .pcm import RATE, Resampler, to_int16
from .recognizer import FRAME_RATE, PHONES, Phone, PhonemeStream, arpabet, merge_silences, recognize, transcript_words
from .wav import WavReader

__all__ = ["ESPEAK_MAPPING", "Espeak", "FRAME_RATE", "PHONES", "Phone", "PhonemeStream", "RATE", "Resampler",
           "WavReader", "arpabet", "arpabet_table", "espeak_g2p", "events_to_phones", "merge_silences",
           "recognize", "speak", "to_int16", "transcript_words"]

