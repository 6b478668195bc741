"""The engine client: how transports talk to an engine (:mod:`.base`), the one output stream every
transport reads (:mod:`.stream`), admission (:mod:`.admission`), and the in-process implementation
whose engine core runs in a thread of this process (:mod:`.inprocess`, imported on its own: it
loads the engine code)."""

from streamtts.engine_client.admission import Admission, Busy, Slot
from streamtts.engine_client.base import EngineClient, Utterance, UtteranceSpec
from streamtts.engine_client.stream import FRAME_S, Audio, Done, Event, Failed, OutputStream, Segment

__all__ = ["Admission", "Busy", "Slot", "EngineClient", "Utterance", "UtteranceSpec", "OutputStream", "Event",
           "Audio", "Segment", "Done", "Failed", "FRAME_S"]
