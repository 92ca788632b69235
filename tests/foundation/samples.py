"""Response bodies shaped as the protocol facts describe (campaign-protocol.md)."""

from __future__ import annotations

ENVELOPE_OPEN = (
    "<?xml version='1.0'?>"
    '<SOAP-ENV:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xmlns:ns="{ns}" xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">'
    "<SOAP-ENV:Body>"
)
ENVELOPE_CLOSE = "</SOAP-ENV:Body></SOAP-ENV:Envelope>"


def response(method: str, inner: str, ns: str = "urn:wpp:default") -> bytes:
    return (
        ENVELOPE_OPEN.format(ns=ns) + f'<{method}Response xmlns="{ns}"'
        ' SOAP-ENV:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        + inner
        + f"</{method}Response>"
        + ENVELOPE_CLOSE
    ).encode()


def logon_response(session: str, security: str, timeout: str = "86400") -> bytes:
    return response(
        "Logon",
        f'<pstrSessionToken xsi:type="xsd:string">{session}</pstrSessionToken>'
        '<pSessionInfo xsi:type="ns:Element"'
        ' SOAP-ENV:encodingStyle="http://xml.apache.org/xml-soap/literalxml">'
        f'<sessionInfo><serverInfo buildNumber="9349" sessionTimeOut="{timeout}"'
        f' securityTimeOut="{timeout}"/>'
        '<userInfo login="admin" loginId="1" timezone="Europe/Paris">'
        '<login-group id="1"/></userInfo></sessionInfo></pSessionInfo>'
        f'<pstrSecurityToken xsi:type="xsd:string">{security}</pstrSecurityToken>',
        ns="urn:xtk:session",
    )


def ingest_response(uuids: str) -> bytes:
    if uuids:
        return response("Ingest", f'<pstrSUuids xsi:type="xsd:string">{uuids}</pstrSUuids>')
    return response("Ingest", '<pstrSUuids xsi:type="xsd:string"/>')


def fault(faultcode: str, faultstring: str, detail: str = "") -> bytes:
    detail_xml = f'<detail xsi:type="xsd:string">{detail}</detail>' if detail else ""
    return (
        ENVELOPE_OPEN.format(ns="urn:xtk:session")
        + f"<SOAP-ENV:Fault><faultcode>{faultcode}</faultcode>"
        f'<faultstring xsi:type="xsd:string">{faultstring}</faultstring>{detail_xml}'
        "</SOAP-ENV:Fault>" + ENVELOPE_CLOSE
    ).encode()


SESSION_EXPIRED_TEXT = b"XSV-350008 Session has expired or is invalid. Please reconnect."

PROXY_HTML = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">
<SOAP-ENV:Body><LogonResponse xmlns="urn:xtk:session">
<pstrSessionToken>&lol9;</pstrSessionToken></LogonResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>
"""


def external_entity(path: str) -> bytes:
    return (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file://' + path + '">]>'
        '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">'
        '<SOAP-ENV:Body><IngestResponse xmlns="urn:wpp:default">'
        "<pstrSUuids>&xxe;</pstrSUuids></IngestResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()
