"""Speech: 16 kHz PCM and resampling, sample formats, WAV files and streams, Opus packets, audio
streamed in as bytes, sentences, espeak-ng and Festival synthesis, phoneme recognition and alignment."""
from .espeak import ESPEAK_MAPPING, Espeak, arpabet_table, espeak_g2p, events_to_phones, speak
from .festival import (
                       FESTIVAL_MAPPING,
                       FESTIVAL_PACKAGES,
                       FESTIVAL_VOICE,
                       Festival,
                       FestivalError,
                       festival_text,
                       parse_segments,
                       scheme_string,
                       segments_to_phones,
)
from .harvard import HARVARD_SENTENCES
from .opus import OPUS_CHANNELS, OPUS_RATE, OpusDecoder
from .pcm import RATE, Resampler, to_int16
from .recognizer import FRAME_RATE, PHONES, Phone, PhonemeStream, arpabet, merge_silences, recognize, transcript_words
from .samples import SAMPLE_FORMATS, FrameDecoder, SampleFormat, sample_format, to_mono
from .sentences import MAX_SENTENCE_CHARS, split_sentences
from .streams import CODECS, AudioStream, OpusStream, PcmStream, open_stream
from .wav import MAX_HEADER_BYTES, WavFormat, WavReader, WavStream, parse_fmt, read_wav

__all__ = ["HARVARD_SENTENCES", "AudioStream", "CODECS", "ESPEAK_MAPPING", "Espeak", "FESTIVAL_MAPPING", "FESTIVAL_PACKAGES",
           "FESTIVAL_VOICE", "FRAME_RATE", "Festival", "FestivalError", "FrameDecoder", "MAX_HEADER_BYTES",
           "MAX_SENTENCE_CHARS", "OPUS_CHANNELS", "OPUS_RATE", "OpusDecoder", "OpusStream", "PHONES", "PcmStream",
           "Phone", "PhonemeStream", "RATE", "Resampler", "SAMPLE_FORMATS", "SampleFormat", "WavFormat", "WavReader",
           "WavStream", "arpabet", "arpabet_table", "espeak_g2p", "events_to_phones", "festival_text",
           "merge_silences", "open_stream", "parse_fmt", "parse_segments", "read_wav", "recognize", "sample_format",
           "scheme_string", "segments_to_phones", "speak", "split_sentences", "to_int16", "to_mono",
           "transcript_words"]
