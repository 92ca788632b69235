// Drives the Campaign simulator with Adobe's JavaScript SDK, as a Campaign developer would.
//
// Usage: node session.js '{"url": "http://127.0.0.1:PORT", "login": "admin", "password": ...,
//                          "clientId": ..., "clientSecret": ..., "steps": ["ims", ...]}'
// (steps: userPassword, ims, expiry, faults, schemas; all when omitted. "schemas" reads
//  settings.schemas with client.getSchema in the XML, SimpleJson and BadgerFish
//  representations, and through application.getSchema.)
// Prints one JSON object with what each step returned (or the SDK error it raised);
// tests/sdk/test_sdk_session.py checks it and reads the records back from the simulator.
"use strict";

const sdk = require("@adobe/acc-js-sdk");

const STG = "dem:sampleTableStg";

async function control(url, changes) {
  const answer = await fetch(`${url}/__sim/control`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(changes),
  });
  if (answer.status !== 200) throw new Error(`control ${answer.status}: ${await answer.text()}`);
}

async function imsToken(settings) {
  const form = new URLSearchParams({
    grant_type: "client_credentials",
    client_id: settings.clientId,
    client_secret: settings.clientSecret,
    scope: "openid,AdobeID,additional_info.projectedProductContext",
  });
  const answer = await fetch(`${settings.url}/ims/token/v3`, { method: "POST", body: form });
  const grant = await answer.json();
  if (answer.status !== 200) throw new Error(`IMS ${answer.status}: ${JSON.stringify(grant)}`);
  return grant;
}

function describeError(error) {
  return {
    name: error.name,
    statusCode: error.statusCode,
    errorCode: error.errorCode,
    faultCode: error.faultCode,
    faultString: error.faultString,
    detail: error.detail,
  };
}

// The four write methods, each through NLWS as the SDK documents them; `prefix` keeps
// the records of each authentication mode apart.
async function writeAll(client, prefix) {
  const NLWS = client.NLWS;
  const done = {};
  await NLWS.xtkSession.write({
    xtkschema: STG, _key: "@id", id: `${prefix}-write`, testcol1: "written",
  });
  await NLWS.xtkSession.writeCollection({
    xtkschema: STG,
    sampleTableStg: [
      { id: `${prefix}-coll-1`, testcol1: "first" },
      { id: `${prefix}-coll-2`, testcol1: "second", _operation: "insert" },
    ],
  });
  done.uuid = await NLWS.xtkSession.ingest({ xtkschema: STG, testcol1: `${prefix}-ingested` });
  done.keyedUuid = await NLWS.xtkSession.ingest({
    xtkschema: STG, _key: "@id", id: `${prefix}-ingest-keyed`, testcol1: "keyed",
  });
  done.ingestExt = await NLWS.xtkSession.ingestExt({
    xtkschema: STG, _key: "@id", id: `${prefix}-write`, testcol2: "updated by ingestExt",
  });
  await NLWS.xtkSession.ingestExt({
    xtkschema: STG, _key: "@id", _operation: "delete", id: `${prefix}-coll-2`,
  });
  return done;
}

async function userPasswordSession(settings) {
  const params = sdk.ConnectionParameters.ofUserAndPassword(
    settings.url, settings.login, settings.password, {});
  const client = await sdk.init(params);
  await client.logon();
  const result = await writeAll(client, "pw");
  const info = await client.NLWS.xtkSession.getUserInfo();
  result.login = info.login;
  result.ping = await client.ping();
  await client.logoff();
  return result;
}

async function imsSession(settings) {
  const grant = await imsToken(settings);
  const params = sdk.ConnectionParameters.ofImsBearerToken(
    settings.url, grant.access_token, { sessionInfo: true });
  const client = await sdk.init(params);
  await client.logon();
  const result = await writeAll(client, "ims");
  result.expiresIn = grant.expires_in;
  result.instanceName = client.application.instanceName;
  result.buildNumber = client.application.buildNumber;
  return result;
}

async function expirySession(settings) {
  const result = { refreshed: 0 };
  const plain = await sdk.init(sdk.ConnectionParameters.ofUserAndPassword(
    settings.url, settings.login, settings.password, {}));
  const refreshing = await sdk.init(sdk.ConnectionParameters.ofUserAndPassword(
    settings.url, settings.login, settings.password, {
      refreshClient: async (client) => {
        result.refreshed += 1;
        await client.logon();
        return client;
      },
    }));
  await plain.logon();
  await refreshing.logon();
  await control(settings.url, { expire_sessions: true });
  try {
    await plain.NLWS.xtkSession.write({ xtkschema: STG, _key: "@id", id: "expired", testcol1: "x" });
    result.plain = "no error";
  } catch (error) {
    result.plain = describeError(error);
  }
  await refreshing.NLWS.xtkSession.write({
    xtkschema: STG, _key: "@id", id: "after-refresh", testcol1: "retried",
  });
  return result;
}

async function faultSession(settings) {
  const result = {};
  const client = await sdk.init(sdk.ConnectionParameters.ofUserAndPassword(
    settings.url, settings.login, settings.password, {}));
  await client.logon();
  for (const status of [200, 500]) {
    await control(settings.url, { fault_status: status });
    try {
      await client.NLWS.xtkSession.write({ xtkschema: STG, id: "bad", bogus: "1" });
      result[status] = "no error";
    } catch (error) {
      result[status] = describeError(error);
    }
  }
  await control(settings.url, { fault_status: 500 });
  return result;
}

// What the SDK makes of each schema the simulator serves: the raw XML, both JSON
// representations, and the parsed XtkSchema's attributes (type, length, enum) and keys.
async function schemaSession(settings) {
  const client = await sdk.init(sdk.ConnectionParameters.ofUserAndPassword(
    settings.url, settings.login, settings.password, {}));
  await client.logon();
  const result = {};
  for (const id of settings.schemas || []) {
    const xml = await client.getSchema(id, "xml");
    if (!xml) {
      result[id] = null;
      continue;
    }
    const parsed = await client.application.getSchema(id);
    const attributes = {};
    parsed.root.children.forEach((child) => {
      if (child.isAttribute) {
        attributes[child.name] = { type: child.type, length: child.length, enum: child.enum };
      }
    });
    const keys = [];
    parsed.root.keys.forEach((key) => key.fields.forEach((field) => keys.push(field.name)));
    result[id] = {
      xml: sdk.DomUtil.toXMLString(xml),
      simpleJson: await client.getSchema(id, "SimpleJson"),
      badgerFish: await client.getSchema(id, "BadgerFish"),
      attributes,
      keys,
    };
  }
  await client.logoff();
  return result;
}

async function main() {
  const settings = JSON.parse(process.argv[2]);
  const steps = {
    userPassword: userPasswordSession,
    ims: imsSession,
    expiry: expirySession,
    faults: faultSession,
    schemas: schemaSession,
  };
  const output = {};
  for (const name of settings.steps || Object.keys(steps)) {
    output[name] = await steps[name](settings);
  }
  process.stdout.write(JSON.stringify(output) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n${JSON.stringify(describeError(error))}\n`);
  process.exit(1);
});
