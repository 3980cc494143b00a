"""The receiver child never writes a password or a credential-bearing URL: everything it writes is masked."""
import io
import time

from inference_pipeline.connectors.mqtt.receiver import start_receiver, write_frame
from inference_pipeline.connectors.mqtt.redact import RedactingStream, redact
from inference_pipeline.connectors.mqtt.settings import MqttSettings


def test_redact_masks_url_passwords_and_known_secrets():
    text = "mqtt://iotml:url-pa55word@broker:1883/t and mqtts://u:p@h, then s3cret alone; http://host/x:y@z kept"
    assert redact(text, ["s3cret", None, ""]) == (
        "mqtt://iotml:***@broker:1883/t and mqtts://u:***@h, then *** alone; http://host/x:y@z kept")


def test_the_redacting_stream_masks_each_write():
    target = io.StringIO()
    stream = RedactingStream(target, ["s3cret"])
    assert stream.write("user s3cret at mqtt://a:b@c\n") == len("user s3cret at mqtt://a:b@c\n")
    stream.flush()
    assert target.getvalue() == "user *** at mqtt://a:***@c\n"


def test_the_receiver_child_masks_a_credential_url_it_logs(capfd, monkeypatch):
    monkeypatch.setenv("IOTML_MQTT_PASSWORD", "env-pa55word")
    settings = MqttSettings(host="mqtt://iotml:url-pa55word@127.0.0.1", client_id="iotml-redact-env-pa55word",
                            topics=("t/#",), username="iotml", password="s3cret", reconnect_min_s=1)
    child = start_receiver(settings)
    try:
        deadline = time.monotonic() + 20
        seen = ""
        while seen.count("could not reach") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            seen += capfd.readouterr().err
    finally:
        write_frame(child.stdin, None)
        child.stdin.close()
        child.wait(10)
    seen += capfd.readouterr().err
    assert "could not reach mqtt://iotml:***@127.0.0.1:1883; retrying" in seen
    assert "iotml-redact-***" in seen
    assert not any(secret in seen for secret in ("url-pa55word", "env-pa55word", "s3cret"))
